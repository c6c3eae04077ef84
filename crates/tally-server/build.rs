//! Stamps the build with the git commit it was built from, for `tally_build_info{revision}`:
//! `TALLY_REVISION` from the environment if set (the Docker build has no `.git`: it passes
//! `--build-arg TALLY_REVISION=...`), else `git rev-parse --short=12 HEAD`, else "unknown".

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=TALLY_REVISION");
    // Without any rerun-if-changed on a file, cargo would rerun this on every change in the
    // crate; with one, only when it (or what follows) changes.
    println!("cargo:rerun-if-changed=build.rs");
    let revision = match std::env::var("TALLY_REVISION") {
        Ok(r) if !r.trim().is_empty() => r.trim().to_owned(),
        _ => from_git().unwrap_or_else(|| "unknown".to_owned()),
    };
    println!("cargo:rustc-env=TALLY_REVISION={revision}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}

fn from_git() -> Option<String> {
    let revision = git(&["rev-parse", "--short=12", "HEAD"])?;
    // A new commit moves the branch's ref, not HEAD; a checkout moves HEAD. Watch both, but
    // only files that exist: cargo reruns a build script on every build for a missing one.
    // In a worktree, HEAD is under --git-dir and the refs under --git-common-dir.
    let rerun_on = |p: PathBuf| {
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    };
    if let Some(dir) = git(&["rev-parse", "--path-format=absolute", "--git-dir"]) {
        rerun_on(PathBuf::from(dir).join("HEAD"));
    }
    if let Some(common) = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]) {
        let common = PathBuf::from(common);
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            rerun_on(common.join(branch));
        }
        // Refs end up here after `git gc` or `git pack-refs`.
        rerun_on(common.join("packed-refs"));
    }
    Some(revision)
}
