//! `cargo xtask test`: installs (as root) or names the missing host packages,
//! runs `cargo test --workspace`, then builds the Hetzner image from the demo
//! payload and checks it: a byte-identical rebuild, a cold build by another
//! user (see `other_user`),
//! both boot tests, and parity with the SDK container.

use crate::progress::logger;
use crate::util::{init_binary, repo_root};
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
    // Tests that need root are #[ignore]d with the reason; as root, run them too.
    if unsafe { libc::geteuid() } == 0 {
        if !args.iter().any(|x| x == "--") {
            args.push("--".into());
        }
        args.push("--include-ignored".into());
    } else {
        println!("not root: the tests marked ignored (they need root) are skipped; cargo test lists them");
    }
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
    // The same commit built cold by another user, in another directory, with
    // its own cargo home and cache: the root build's bytes.
    if unsafe { libc::geteuid() } == 0 {
        let other = crate::other_user::build(&log)?;
        let owner_ok = std::fs::metadata(other.out_dir.join(artifacts[0]))
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == crate::other_user::UID)
            .unwrap_or(false);
        let sha =
            |d: &Path| sha256_file(&d.join(artifacts[0])).unwrap_or_else(|e| format!("({e:#})"));
        let same_bytes = other.ok && owner_ok && same(&out_dir, &other.out_dir)?;
        report(
            "a cold build by another user (uid 65534; own clone, cargo home and cache; afterburn and forge-init compiled) gives the root build's bytes",
            same_bytes,
            format!(
                "root {} / uid {} {} ({:.0}s{})",
                sha(&out_dir),
                crate::other_user::UID,
                sha(&other.out_dir),
                other.secs,
                if other.ok { String::new() } else { format!(", failed: see {}", other.log.display()) }
            ),
        );
    } else {
        println!("SKIPPED (needs root to switch users): the cold build by another user is not run");
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

fn sha256_file(p: &Path) -> Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(p).with_context(|| format!("{}: cannot open", p.display()))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("{}: cannot read", p.display()))?;
    Ok(hex::encode(h.finalize()))
}
