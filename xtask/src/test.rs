//! `cargo xtask test`: installs (as root) or names the missing host packages,
//! runs `cargo test --workspace`, then builds the Hetzner image from the demo
//! payload and checks it: a byte-identical rebuild, the build as uid 65534,
//! both boot tests, and parity with the SDK container.

use crate::progress::logger;
use crate::util::{cache_dir, init_binary, repo_root};
use anyhow::{bail, Context, Result};
use std::path::Path;

#[derive(clap::Args)]
pub struct Args {
    /// Skip building the Hetzner image from the demo payload and booting it (BIOS and UEFI).
    #[arg(long)]
    pub no_boot: bool,
    /// Extra arguments for `cargo test`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cargo_args: Vec<String>,
}

pub fn run(a: Args) -> Result<()> {
    crate::deps::ensure(true)?;
    let log = logger();
    let init = init_binary(&log)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec!["test".to_string(), "--workspace".into(), "--no-fail-fast".into()];
    args.extend(a.cargo_args.iter().cloned());
    let st = std::process::Command::new(&cargo)
        .args(&args)
        .current_dir(repo_root())
        .env("FORGE_INIT", &init)
        .status()?;
    let unit_ok = st.success();
    if a.no_boot {
        if !unit_ok {
            bail!("tests failed");
        }
        return Ok(());
    }
    // The main job, fresh, then both boot tests of its output.
    let out_dir = repo_root().join("target/ci-hetzner");
    let _ = std::fs::remove_dir_all(&out_dir);
    log("test: building the Hetzner image from the demo payload");
    let st = std::process::Command::new(std::env::current_exe()?)
        .args(["build-image", "--platform", "hetzner", "--output-dir"])
        .arg(&out_dir)
        .env("FORGE_INIT", &init)
        .status()?;
    if !st.success() {
        bail!("building the Hetzner image failed");
    }
    let image = out_dir.join("flatcar_production_hetzner_image.bin.bz2");
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut report = |name: &str, ok: bool, detail: String| {
        println!(
            "[{}] {} {name}{}",
            if ok { "ok" } else { "!!" },
            if ok { "PASS" } else { "FAIL" },
            if detail.is_empty() { detail } else { format!(" — {detail}") }
        );
        if ok {
            passed += 1
        } else {
            failed += 1
        }
    };
    let artifacts = [
        "flatcar_production_hetzner_image.bin.bz2",
        "flatcar_production_hetzner_image.bin.bz2.DIGESTS",
        "version.txt",
    ];
    let same = |a: &Path, b: &Path| -> Result<bool> {
        for f in artifacts {
            if std::fs::read(a.join(f)).with_context(|| a.join(f).display().to_string())?
                != std::fs::read(b.join(f)).with_context(|| b.join(f).display().to_string())?
            {
                return Ok(false);
            }
        }
        Ok(true)
    };
    // Rebuild elsewhere, later: identical bytes.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let again = repo_root().join("target/ci-hetzner-again");
    let _ = std::fs::remove_dir_all(&again);
    let st = std::process::Command::new(std::env::current_exe()?)
        .args(["build-image", "--platform", "hetzner", "--output-dir"])
        .arg(&again)
        .env("FORGE_INIT", &init)
        .status()?;
    report(
        "rebuild in another directory gives byte-identical .bin.bz2, .DIGESTS and version.txt",
        st.success() && same(&out_dir, &again)?,
        String::new(),
    );
    // The whole build as an unprivileged user (uid 65534), payload included,
    // from a fresh cache seeded only with downloads and the afterburn binary.
    if unsafe { libc::geteuid() } == 0 {
        let base = repo_root().join("target/ci-nobody");
        let _ = std::fs::remove_dir_all(&base);
        let cache = base.join("cache");
        std::fs::create_dir_all(&cache)?;
        let root_cache = cache_dir(None);
        for d in ["apt", "debs", "crates"] {
            duct::cmd!("cp", "-a", root_cache.join(d), &cache).run()?;
        }
        let _ = std::fs::remove_dir_all(cache.join("crates/target"));
        let init_copy = base.join("forge-init");
        std::fs::copy(&init, &init_copy)?;
        duct::cmd!("chown", "-R", "65534:65534", &base).run()?;
        let out = base.join("out");
        let st = std::process::Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "env",
                "HOME=/nonexistent",
            ])
            .arg(format!("FORGE_INIT={}", init_copy.display()))
            .arg(format!("FORGE_CACHE={}", cache.display()))
            .arg(std::env::current_exe()?)
            .args(["build-image", "--platform", "hetzner", "--output-dir"])
            .arg(&out)
            .status()?;
        let owner_ok = std::fs::metadata(out.join(artifacts[0]))
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 65534)
            .unwrap_or(false);
        report("the whole build as uid 65534 (payload from packages included) gives the root build's bytes", st.success() && owner_ok && same(&out_dir, &out)?, String::new());
    } else {
        println!("not root: the unprivileged-build check (setpriv to uid 65534) is not run");
    }
    for fw in ["bios", "uefi"] {
        log(&format!("test: boot test ({fw})"));
        let o = std::process::Command::new(std::env::current_exe()?)
            .args(["boot-test"])
            .arg(&image)
            .args(["--firmware", fw])
            .output()?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout));
        print!("{text}");
        let (p, f) = (
            text.lines().filter(|l| l.contains("] PASS ")).count(),
            text.lines().filter(|l| l.contains("] FAIL ")).count(),
        );
        passed += p;
        failed += f;
        if !o.status.success() && f == 0 {
            failed += 1; // the boot test itself failed before its checks
        }
    }
    // Parity: the same build in the SDK container gives the same bytes, and
    // the boot test passes when run inside the container too.
    if forge::tools::find("podman").is_some() || forge::tools::find("docker").is_some() {
        log("test: SDK container image and parity build");
        let script = repo_root().join("run_sdk_container");
        let sdk_out = repo_root().join("target/ci-sdk");
        let _ = std::fs::remove_dir_all(&sdk_out);
        let built = std::process::Command::new(&script)
            .arg("--build-image")
            .args(["cargo", "xtask", "build-image", "--platform", "hetzner", "--output-dir"])
            .arg(&sdk_out)
            .status()?
            .success();
        let same_bytes = built && same(&out_dir, &sdk_out)?;
        println!("[{}] {} build-image --platform hetzner inside the SDK container gives the host build's sha256", if same_bytes { "ok" } else { "!!" }, if same_bytes { "PASS" } else { "FAIL" });
        if same_bytes {
            passed += 1
        } else {
            failed += 1
        }
        let o = std::process::Command::new(&script)
            .args(["cargo", "xtask", "boot-test"])
            .arg(sdk_out.join("flatcar_production_hetzner_image.bin.bz2"))
            .args(["--firmware", "bios", "--no-negative"])
            .output()?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout));
        let f = text.lines().filter(|l| l.contains("] FAIL ")).count();
        let ok = o.status.success() && f == 0;
        println!(
            "[{}] {} the BIOS boot test passes inside the SDK container ({} checks)",
            if ok { "ok" } else { "!!" },
            if ok { "PASS" } else { "FAIL" },
            text.lines().filter(|l| l.contains("] PASS ")).count()
        );
        if !ok {
            print!("{text}");
            failed += 1;
        } else {
            passed += 1;
        }
    } else {
        println!("neither podman nor docker: the SDK container parity checks are not run");
    }
    if !unit_ok {
        println!("cargo test reported failures (see above)");
    }
    println!("boot-tests: {passed} passed, {failed} failed");
    if !unit_ok || failed > 0 {
        bail!("tests failed");
    }
    Ok(())
}
