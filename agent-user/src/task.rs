//! Task identity: unique ids and signed workload-identity documents.
use std::io;

use serde::{Deserialize, Serialize};

use crate::audit::chain::{NodeKey, sha256_hex, verify_sig};

/// A unique task id: `<name>-<16 hex digits from the kernel CSPRNG>`.
pub fn new_task_id(name: &str) -> io::Result<String> {
    let mut b = [0u8; 8];
    // SAFETY: valid buffer of the given length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(format!("{name}-{:016x}", u64::from_le_bytes(b)))
}

/// The workload identity of one task, signed by the node key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityDoc {
    /// Document format version (1).
    pub v: u32,
    pub task: String,
    /// SHA-256 (hex) of the scope file the task is bound to.
    pub scope_hash: String,
    pub cgroup_id: u64,
    /// The node's host name.
    pub node: String,
    /// RFC 3339.
    pub started: String,
    /// RFC 3339, when the scope has a ttl.
    pub expires: Option<String>,
    /// The pod and container, for a task bound to a pod's container (absent otherwise, so
    /// documents without it are signed as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::k8s::pod::PodIdentity>,
    /// A call's document: the call's id (`<task>/c1/c3`: its parent's id and its own part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    /// A call's document: its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_name: Option<String>,
    /// A call's document: its parent's whole signed document (the task's, or the parent
    /// call's, which holds its own parent): the delegation chain up to the task, each link
    /// signed by the node key. Signed with the rest, so no link can be swapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Box<IdentityDoc>>,
    /// The signer's ed25519 public key (hex).
    pub key: String,
    /// base64 ed25519 signature over the document's JSON with `sig` empty.
    pub sig: String,
}

/// Why an identity document does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("not an identity document: {0}")]
    Malformed(String),
    #[error("identity document version {0} is not supported")]
    Version(u32),
    #[error("signature does not verify: the document was altered or not signed by {0}")]
    Signature(String),
    #[error("signed by {found}, not by the trusted key {trusted}")]
    Untrusted { found: String, trusted: String },
    #[error("delegation chain broken: {0}")]
    Chain(String),
}

/// This node's name (its host name; empty if it has none).
pub fn node_name() -> String {
    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
}

impl IdentityDoc {
    /// A version 1 document for a task, signed with `key`.
    pub fn new_signed(
        key: &NodeKey,
        task: &str,
        scope_hash: String,
        cgroup_id: u64,
        node: String,
        started: String,
        expires: Option<String>,
    ) -> Self {
        IdentityDoc {
            v: 1,
            task: task.to_string(),
            scope_hash,
            cgroup_id,
            node,
            started,
            expires,
            pod: None,
            call: None,
            call_name: None,
            parent: None,
            key: String::new(),
            sig: String::new(),
        }
        .sign(key)
    }

    /// A call's document under `parent` (the task's or the parent call's document), signed
    /// with `key`.
    #[allow(clippy::too_many_arguments)]
    pub fn new_call(
        key: &NodeKey,
        parent: &IdentityDoc,
        call: &str,
        name: &str,
        scope_hash: String,
        cgroup_id: u64,
        started: String,
        expires: Option<String>,
    ) -> Self {
        IdentityDoc {
            v: 1,
            task: parent.task.clone(),
            scope_hash,
            cgroup_id,
            node: parent.node.clone(),
            started,
            expires,
            pod: parent.pod.clone(),
            call: Some(call.to_string()),
            call_name: Some(name.to_string()),
            parent: Some(Box::new(parent.clone())),
            key: String::new(),
            sig: String::new(),
        }
        .sign(key)
    }

    /// The id this document names: the call's, or the task's.
    pub fn subject(&self) -> &str {
        self.call.as_deref().unwrap_or(&self.task)
    }

    /// How many links lie above this document (0 for a task's).
    pub fn depth(&self) -> usize {
        self.parent.as_ref().map_or(0, |p| 1 + p.depth())
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let unsigned = IdentityDoc { sig: String::new(), ..self.clone() };
        serde_json::to_vec(&unsigned).expect("plain struct serializes")
    }

    /// Fills `key` and `sig`.
    pub fn sign(mut self, key: &NodeKey) -> Self {
        self.key = key.public_hex();
        self.sig = String::new();
        self.sig = key.sign(&self.signed_bytes());
        self
    }

    /// Parses and checks a document; `trusted` pins the signer.
    pub fn verify(text: &str, trusted: Option<&str>) -> Result<Self, IdentityError> {
        let doc: IdentityDoc =
            serde_json::from_str(text).map_err(|e| IdentityError::Malformed(e.to_string()))?;
        if doc.v != 1 {
            return Err(IdentityError::Version(doc.v));
        }
        if let Some(t) = trusted
            && t != doc.key
        {
            return Err(IdentityError::Untrusted { found: doc.key.clone(), trusted: t.to_string() });
        }
        doc.check(trusted)?;
        Ok(doc)
    }

    /// Checks this document's signature, then each link of its delegation chain up to the
    /// task's document: every link signed by the same node key, of the same task and node,
    /// and each call's id below its parent's.
    fn check(&self, trusted: Option<&str>) -> Result<(), IdentityError> {
        if self.v != 1 {
            return Err(IdentityError::Version(self.v));
        }
        if let Some(t) = trusted
            && t != self.key
        {
            return Err(IdentityError::Untrusted { found: self.key.clone(), trusted: t.to_string() });
        }
        if !verify_sig(&self.key, &self.signed_bytes(), &self.sig) {
            return Err(IdentityError::Signature(self.key.clone()));
        }
        match (&self.call, &self.parent) {
            (None, None) => Ok(()),
            (Some(call), Some(p)) => {
                if p.task != self.task || p.node != self.node {
                    return Err(IdentityError::Chain(format!("{call}'s parent is of another task or node")));
                }
                if !call.strip_prefix(p.subject()).is_some_and(|rest| rest.starts_with("/c")) {
                    return Err(IdentityError::Chain(format!("{call} is not a call of {}", p.subject())));
                }
                p.check(Some(&self.key)).map_err(|e| match e {
                    IdentityError::Chain(_) => e,
                    other => IdentityError::Chain(format!("the link {}: {other}", p.subject())),
                })
            }
            (Some(call), None) => Err(IdentityError::Chain(format!("{call} names no parent"))),
            (None, Some(_)) => Err(IdentityError::Chain("a task's document names a parent".into())),
        }
    }
}

/// SHA-256 (hex) of a scope's text, as identity documents and `task_start` carry it.
pub fn scope_hash(text: &str) -> String {
    sha256_hex(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_named() {
        let a = new_task_id("t").unwrap();
        let b = new_task_id("t").unwrap();
        assert!(a.starts_with("t-") && a.len() == 18);
        assert_ne!(a, b);
    }

    #[test]
    fn identity_documents_verify_and_tampering_fails() {
        let d = tempfile::tempdir().unwrap();
        let key = NodeKey::load_or_create(&d.path().join("k")).unwrap();
        let doc = IdentityDoc {
            v: 1,
            task: "t-1".into(),
            scope_hash: scope_hash("version: 1\ntask: t\n"),
            cgroup_id: 7,
            node: "n".into(),
            started: "2026-01-01T00:00:00.000000000Z".into(),
            expires: None,
            pod: None,
            call: None,
            call_name: None,
            parent: None,
            key: String::new(),
            sig: String::new(),
        }
        .sign(&key);
        let text = serde_json::to_string(&doc).unwrap();
        assert_eq!(IdentityDoc::verify(&text, Some(&key.public_hex())).unwrap(), doc);
        assert!(!text.contains("parent"), "a task's document is signed as before: {text}");
        let tampered = text.replace("\"cgroup_id\":7", "\"cgroup_id\":8");
        assert!(matches!(IdentityDoc::verify(&tampered, None), Err(IdentityError::Signature(_))));
        assert!(matches!(IdentityDoc::verify(&text, Some("00")), Err(IdentityError::Untrusted { .. })));
        assert!(matches!(IdentityDoc::verify("{}", None), Err(IdentityError::Malformed(_))));
        // A pod's document: the pod is signed with the rest; changing it breaks the signature.
        let pod = crate::k8s::pod::PodIdentity {
            uid: "3d1f0b8e-5c2a-4f6e-9a7b-0c1d2e3f4a5b".into(),
            namespace: "agents".into(),
            name: "agent-1".into(),
            container: "runner".into(),
            container_id: "ab".repeat(32),
            runtime: "containerd".into(),
        };
        let doc = IdentityDoc { pod: Some(pod), ..doc }.sign(&key);
        let text = serde_json::to_string(&doc).unwrap();
        assert!(text.contains(r#""namespace":"agents""#), "{text}");
        assert_eq!(IdentityDoc::verify(&text, None).unwrap(), doc);
        let moved = text.replace("agent-1", "agent-2");
        assert!(matches!(IdentityDoc::verify(&moved, None), Err(IdentityError::Signature(_))));
    }

    #[test]
    fn call_chains_verify_to_the_task_and_a_tampered_link_fails() {
        let d = tempfile::tempdir().unwrap();
        let key = NodeKey::load_or_create(&d.path().join("k")).unwrap();
        let other = NodeKey::load_or_create(&d.path().join("k2")).unwrap();
        let task = IdentityDoc::new_signed(&key, "t-1", "aa".into(), 7, "n".into(), "s".into(), None);
        let mut doc = task.clone();
        for (i, id) in ["t-1/c1", "t-1/c1/c2", "t-1/c1/c2/c3", "t-1/c1/c2/c3/c4"].iter().enumerate() {
            doc = IdentityDoc::new_call(&key, &doc, id, "step", "bb".into(), 8 + i as u64, "s".into(), None);
        }
        assert_eq!(doc.depth(), 4);
        let text = serde_json::to_string(&doc).unwrap();
        assert_eq!(IdentityDoc::verify(&text, Some(&key.public_hex())).unwrap(), doc);
        // A link in the middle altered: its signature (and its child's) fails.
        let tampered = text.replace(r#""cgroup_id":9"#, r#""cgroup_id":99"#);
        assert_ne!(tampered, text);
        assert!(IdentityDoc::verify(&tampered, None).is_err());
        // A link re-signed by another key after tampering: the chain names the break.
        let mut bad = doc.clone();
        let mid = bad.parent.as_mut().unwrap().parent.as_mut().unwrap();
        mid.cgroup_id = 99;
        **mid = (**mid).clone().sign(&other);
        let bad = bad
            .parent
            .take()
            .map(|p| {
                IdentityDoc::new_call(&key, &p, "t-1/c1/c2/c3/c4", "x", "bb".into(), 1, "s".into(), None)
            })
            .unwrap();
        assert!(matches!(
            IdentityDoc::verify(&serde_json::to_string(&bad).unwrap(), None),
            Err(IdentityError::Chain(_))
        ));
        // A call that claims a parent it is not below.
        let stray = IdentityDoc::new_call(&key, &task, "t-2/c1", "x", "bb".into(), 1, "s".into(), None);
        assert!(matches!(
            IdentityDoc::verify(&serde_json::to_string(&stray).unwrap(), None),
            Err(IdentityError::Chain(_))
        ));
        // The parent link removed.
        let orphan = IdentityDoc { parent: None, ..doc.clone() }.sign(&key);
        assert!(matches!(
            IdentityDoc::verify(&serde_json::to_string(&orphan).unwrap(), None),
            Err(IdentityError::Chain(_))
        ));
    }
}
