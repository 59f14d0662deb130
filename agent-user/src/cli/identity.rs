//! `warden identity verify DOC`: check a task's signed workload-identity document.
use std::path::PathBuf;

use super::Failure;
use crate::task::IdentityDoc;

#[derive(Debug, clap::Subcommand)]
pub enum IdentityCmd {
    /// Verify an identity document's signature; exit 0 only if it verifies.
    Verify {
        doc: PathBuf,
        /// Accept only this signer (ed25519 public key, hex).
        #[arg(long, value_name = "HEX")]
        key: Option<String>,
    },
}

pub fn run(cmd: IdentityCmd) -> Result<i32, Failure> {
    let IdentityCmd::Verify { doc, key } = cmd;
    let text = std::fs::read_to_string(&doc)
        .map_err(|e| Failure::Usage(anyhow::anyhow!("cannot read {}: {e}", doc.display())))?;
    match IdentityDoc::verify(&text, key.as_deref()) {
        Ok(d) => {
            let mut link = d.parent.as_deref();
            if d.call.is_some() {
                println!(
                    "{}: call {} ({}) of task {}",
                    doc.display(),
                    d.subject(),
                    d.call_name.as_deref().unwrap_or(""),
                    d.task
                );
            }
            while let Some(p) = link {
                println!("  delegated by {} (scope {}), signed by {}", p.subject(), p.scope_hash, p.key);
                link = p.parent.as_deref();
            }
            println!(
                "{}: valid: task {} on {} (scope {}), signed by {}",
                doc.display(),
                d.task,
                d.node,
                d.scope_hash,
                d.key
            );
            Ok(0)
        }
        Err(e) => {
            println!("{}: invalid: {e}", doc.display());
            Ok(1)
        }
    }
}
