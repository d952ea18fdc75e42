//! `cargo xtask test`: installs (as root) or names the missing host packages,
//! runs `cargo test --workspace`, then builds the Hetzner image from the demo
//! payload and checks it: a byte-identical rebuild and a cold build by
//! another user (see `other_user`); then every platform that declares a
//! boot test (`oem/<id>/boot-test.json`) is built and booted: its artifacts
//! built first, its boots split into jobs per firmware (see `boot_groups`),
//! as many jobs at once as there are cores (counted from the JSON reports),
//! with the SDK container's parity build and boot as one more job.
//! Platforms without a boot test are listed as skipped.

use crate::progress::logger;
use crate::util::{init_binary, init_env, repo_root};
use anyhow::{bail, Context, Result};
use forge::arch::Arch;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Skip building the Hetzner image from the demo payload and booting it (BIOS and UEFI).
    #[arg(long)]
    pub no_boot: bool,
    /// Extra arguments for `cargo test`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cargo_args: Vec<String>,
}

/// Where `cargo xtask test` builds a platform's image for an architecture:
/// `target/ci-<id>` (amd64, as always) or `target/ci-<id>-<arch>`.
fn out_dir_of(id: &str, arch: Arch) -> PathBuf {
    repo_root().join(match arch {
        Arch::Amd64 => format!("target/ci-{id}"),
        _ => format!("target/ci-{id}-{arch}"),
    })
}

/// `build-image --platform id --arch arch --output-dir out`, with the
/// prebuilt forge-init binaries; true on success.
fn build_image(id: &str, arch: Arch, out: &Path, inits: &Inits) -> Result<bool> {
    let mut c = forge::tools::command(std::env::current_exe()?);
    c.args(["build-image", "--platform", id, "--arch", arch.debian(), "--output-dir"]).arg(out);
    inits.apply(&mut c);
    Ok(c.status()?.success())
}

/// forge-init for every architecture, built once; every child build takes them.
struct Inits(Vec<(Arch, PathBuf)>);

impl Inits {
    fn apply(&self, c: &mut std::process::Command) {
        for (arch, p) in &self.0 {
            c.env(init_env(*arch), p);
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    crate::deps::ensure(true)?;
    let log = logger();
    let mut inits = Vec::new();
    for arch in Arch::ALL {
        inits.push((arch, init_binary(arch, None, &log)?));
    }
    let inits = Inits(inits);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = unsafe { libc::geteuid() } == 0;
    // cargo-nextest (on the machine when present) runs the test binaries
    // side by side: most integration tests spend their time in one
    // single-threaded tool (bzip2 -d, e2fsck, mkfs.erofs), which cargo test
    // runs one binary after another. Arguments of the caller's are cargo
    // test's, so with them it is cargo test.
    let nextest = a.cargo_args.is_empty()
        && std::env::var_os("FORGE_TEST_NO_NEXTEST").is_none()
        && forge::tools::find("cargo-nextest").is_some();
    let mut args: Vec<String> = if nextest {
        let mut v: Vec<String> =
            ["nextest", "run", "--workspace", "--no-fail-fast"].map(String::from).into();
        if root {
            v.extend(["--run-ignored".into(), "all".into()]);
        }
        v
    } else {
        vec!["test".to_string(), "--workspace".into(), "--no-fail-fast".into()]
    };
    args.extend(a.cargo_args.iter().cloned());
    // Tests that need root are #[ignore]d with the reason; as root, run them too.
    if root {
        if !nextest {
            if !args.iter().any(|x| x == "--") {
                args.push("--".into());
            }
            args.push("--include-ignored".into());
        }
    } else {
        println!("not root: the tests marked ignored (they need root) are skipped; cargo test lists them");
    }
    log(&format!("test: {cargo} {}", args.join(" ")));
    let mut test = forge::tools::command(&cargo);
    test.args(&args)
        .current_dir(repo_root())
        // deps::ensure above installed every test tool: a test finding one
        // missing fails instead of skipping (tests/examples.rs).
        .env("FORGE_TEST_REQUIRE_TOOLS", "1");
    inits.apply(&mut test);
    let unit_ok = test.status()?.success();
    if a.no_boot {
        if !unit_ok {
            bail!("tests failed");
        }
        return Ok(());
    }
    // The main job, fresh, for every architecture Hetzner is built for;
    // then the boot tests of their outputs.
    let oem = repo_root().join("oem");
    let hetzner = forge::oem::load(&oem, "hetzner")?;
    let arches: Vec<Arch> = hetzner.architectures.keys().copied().collect();
    for arch in &arches {
        let out_dir = out_dir_of("hetzner", *arch);
        let _ = std::fs::remove_dir_all(&out_dir);
        log(&format!("test: building the {arch} Hetzner image from the demo payload"));
        if !build_image("hetzner", *arch, &out_dir, &inits)? {
            bail!("building the {arch} Hetzner image failed");
        }
    }
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
    let sha = |d: &Path| sha256_file(&d.join(artifacts[0])).unwrap_or_else(|e| format!("({e:#})"));
    // Rebuild elsewhere, later: identical bytes. As root the cold build by
    // another user below does that and more (another directory, user, cargo
    // home and cache), so this plain rebuild runs only for other users.
    if unsafe { libc::geteuid() } != 0 {
        std::thread::sleep(std::time::Duration::from_secs(1));
        for arch in &arches {
            let again = repo_root().join(format!("target/ci-hetzner-again-{arch}"));
            let _ = std::fs::remove_dir_all(&again);
            let ok = build_image("hetzner", *arch, &again, &inits)?;
            report(
                &format!("{arch}: a rebuild in another directory gives byte-identical .bin.bz2, .DIGESTS and version.txt"),
                ok && same(&out_dir_of("hetzner", *arch), &again)?,
                String::new(),
            );
        }
    }
    // The same commit built cold by another user, in another directory, with
    // its own cargo home and cache: the root build's bytes, for every
    // architecture (arm64's forge-init and afterburn cross-compiled by that user).
    if unsafe { libc::geteuid() } == 0 {
        for other in crate::other_user::build(&arches, &log)? {
            let root_out = out_dir_of("hetzner", other.arch);
            let owner_ok = std::fs::metadata(other.out_dir.join(artifacts[0]))
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == crate::other_user::UID)
                .unwrap_or(false);
            let same_bytes = other.ok && owner_ok && same(&root_out, &other.out_dir)?;
            report(
                &format!("{}: a cold build by another user (uid 65534; own clone, cargo home and cache; afterburn and forge-init compiled) gives the root build's bytes", other.arch),
                same_bytes,
                format!(
                    "root {} / uid {} {} ({:.0}s{})",
                    sha(&root_out),
                    crate::other_user::UID,
                    sha(&other.out_dir),
                    other.secs,
                    if other.ok { String::new() } else { format!(", failed: see {}", other.log.display()) }
                ),
            );
        }
    } else {
        println!("SKIPPED (needs root to switch users): the cold build by another user is not run");
    }
    // Boot tests: every platform that declares one in oem/<id>/boot-test.json,
    // for each architecture the test and the platform both have, its image
    // built from the demo payload (Hetzner's are the ones above); each
    // (platform, arch, firmware) is split into jobs, as many at a time as
    // there are cores (a TCG guest keeps one core busy).
    let mut skipped = 0usize;
    let mut jobs = Vec::new();
    for id in forge::oem::list(&oem) {
        let Some(spec) = forge_boottest::spec::load_for(&oem, &id)? else {
            let declared = forge_boottest::spec::path(&oem, &id);
            println!("[--] SKIP boot test of platform {id}: no {}", declared.display());
            skipped += 1;
            continue;
        };
        let platform = forge::oem::load(&oem, &id)?;
        for arch in &spec.arch {
            if !platform.architectures.contains_key(arch) {
                println!(
                    "[--] SKIP {arch} boot test of platform {id}: {} has no {arch} build",
                    platform.file().display()
                );
                skipped += 1;
                continue;
            }
            let dir = out_dir_of(&id, *arch);
            if !(id == "hetzner" && arches.contains(arch)) {
                let _ = std::fs::remove_dir_all(&dir);
                log(&format!("test: building the {arch} {id} image from the demo payload"));
                if !build_image(&id, *arch, &dir, &inits)? {
                    report(
                        &format!("build-image --platform {id} --arch {arch} for its boot test"),
                        false,
                        String::new(),
                    );
                    continue;
                }
            }
            let firmwares = spec.firmwares(*arch);
            // Artifacts first, once, before jobs that serve them run in parallel.
            if !spec.artifacts_for(*arch, &firmwares, true).is_empty() {
                log(&format!("test: building the {arch} artifacts of {id}'s boot test"));
                let st = forge::tools::command(std::env::current_exe()?)
                    .args([
                        "boot-test",
                        "--platform",
                        &id,
                        "--arch",
                        arch.debian(),
                        "--artifacts-only",
                    ])
                    .arg(&dir)
                    .status()?;
                if !st.success() {
                    report(
                        &format!("the {arch} artifacts of {id}'s boot test are built"),
                        false,
                        String::new(),
                    );
                    continue;
                }
            }
            for fw in firmwares {
                for (k, variants) in boot_groups(&spec, *arch, fw).into_iter().enumerate() {
                    jobs.push(BootJob {
                        platform: id.clone(),
                        arch: *arch,
                        firmware: fw.name().to_string(),
                        tag: format!("{}-{}.{}", arch, fw.name(), k + 1),
                        variants,
                        dir: dir.clone(),
                    });
                }
            }
        }
    }
    // Parity: the same build in the SDK container gives the same bytes, and
    // the boot test passes when run inside the container too. It runs as
    // one more job beside the boot jobs (about three boots' time).
    let host_out = out_dir_of("hetzner", Arch::Amd64);
    let container =
        forge::tools::find("podman").is_some() || forge::tools::find("docker").is_some();
    let sdk = || sdk_parity(&host_out, &same, &log);
    let extra: Option<ExtraJob> = if container { Some((3, &sdk)) } else { None };
    if !container {
        println!("neither podman nor docker: the SDK container parity checks are not run");
    }
    // Jobs of one image decode it once, into this directory, and copy it.
    let shared = repo_root().join("target/ci-boot-disks");
    let _ = std::fs::remove_dir_all(&shared);
    let ran = run_boot_jobs(&jobs, extra, &shared, &log);
    let _ = std::fs::remove_dir_all(&shared);
    let (p, f) = ran?;
    passed += p;
    failed += f;
    if !unit_ok {
        println!("cargo test reported failures (see above)");
    }
    println!("boot-tests: {passed} passed, {failed} failed, {skipped} skipped");
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

/// One boot test job: some boots of a platform's image (its build-image
/// output directory) with one firmware.
struct BootJob {
    platform: String,
    arch: Arch,
    firmware: String,
    /// `<arch>-<firmware>.<n>`: names the job's log and report.
    tag: String,
    variants: Vec<String>,
    dir: std::path::PathBuf,
}

/// Most boots one job makes: a platform's boots with one firmware are split
/// into jobs of about equal size, none larger, so they spread over the
/// cores (each job pays one decompression of the image).
const MAX_BOOTS_PER_JOB: usize = 6;

/// The boots of `spec` on `arch` with `fw` (negative ones included), in
/// order, split into groups for [`MAX_BOOTS_PER_JOB`]; a boot of the
/// previous boot's disk stays in its predecessor's group.
fn boot_groups(
    spec: &forge_boottest::BootTest,
    arch: Arch,
    fw: forge_boottest::Firmware,
) -> Vec<Vec<String>> {
    let steps = forge_boottest::spec::plan_arch(spec, true, arch, fw);
    let mut chains: Vec<Vec<String>> = Vec::new();
    for s in &steps {
        match (s.disk == forge_boottest::spec::DiskUse::Previous, chains.last_mut()) {
            (true, Some(c)) => c.push(s.boot.variant.clone()),
            _ => chains.push(vec![s.boot.variant.clone()]),
        }
    }
    let total = steps.len();
    let jobs = total.div_ceil(MAX_BOOTS_PER_JOB).max(1);
    let target = total.div_ceil(jobs);
    let mut groups: Vec<Vec<String>> = Vec::new();
    for c in chains {
        match groups.last_mut() {
            Some(g) if g.len() < target => g.extend(c),
            _ => groups.push(c),
        }
    }
    groups
}

/// A job beside the boot jobs: its weight (in boots' time) and what it
/// runs, giving (passed, failed).
type ExtraJob<'a> = (usize, &'a (dyn Fn() -> (usize, usize) + Sync));

/// Runs the boot jobs and the extra one, as many at once as there are
/// cores, heaviest first; each boot job's output goes to
/// `<dir>/boot-test.<tag>.log`, its checks are printed and counted from its
/// JSON report when it ends.
fn run_boot_jobs(
    jobs: &[BootJob],
    extra: Option<ExtraJob>,
    shared_disks: &Path,
    log: &(dyn Fn(&str) + Sync),
) -> Result<(usize, usize)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    // Longest first (a job's weight: its boots), so the short ones fill in
    // at the end.
    let mut work: Vec<(usize, Option<&BootJob>)> =
        jobs.iter().map(|j| (j.variants.len(), Some(j))).collect();
    if let Some((weight, _)) = extra {
        work.push((weight, None));
    }
    work.sort_by_key(|(w, _)| std::cmp::Reverse(*w));
    let workers =
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(work.len().max(1));
    let next = AtomicUsize::new(0);
    let totals = Mutex::new((0usize, 0usize));
    let exe = std::env::current_exe()?;
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((_, job)) = work.get(i) else { break };
                let (p, f) = match job {
                    Some(j) => boot_job(j, &exe, shared_disks, log),
                    None => extra.map_or((0, 0), |(_, run)| run()),
                };
                let mut t = totals.lock().unwrap();
                t.0 += p;
                t.1 += f;
            });
        }
    });
    Ok(totals.into_inner().unwrap())
}

/// One boot job: `boot-test` with its output in `<dir>/boot-test.<tag>.log`
/// (the image decoded once for every job of it, in `shared_disks`); its
/// checks printed and counted from its JSON report.
fn boot_job(
    j: &BootJob,
    exe: &Path,
    shared_disks: &Path,
    log: &(dyn Fn(&str) + Sync),
) -> (usize, usize) {
    let json = j.dir.join(format!("boot-test.{}.json", j.tag));
    let out = j.dir.join(format!("boot-test.{}.log", j.tag));
    log(&format!(
        "test: boot test of {} ({} {}: {}), output in {}",
        j.platform,
        j.arch,
        j.firmware,
        j.variants.join(", "),
        out.display()
    ));
    let counted = std::fs::File::create(&out)
        .and_then(|f| Ok((f.try_clone()?, f)))
        .map_err(anyhow::Error::from)
        .and_then(|(o, e)| {
            let mut cmd = forge::tools::command(exe);
            cmd.args([
                "boot-test",
                "--platform",
                &j.platform,
                "--arch",
                j.arch.debian(),
                "--firmware",
                &j.firmware,
            ])
            .args(j.variants.iter().flat_map(|v| ["--variant", v.as_str()]))
            .arg(&j.dir)
            .arg("--json")
            .arg(&json)
            .arg("--shared-disks")
            .arg(shared_disks)
            .stdout(o)
            .stderr(e);
            boot_reports(cmd, &json)
        });
    let (p, f) = counted.unwrap_or_else(|e| {
        println!("[!!] FAIL boot test of {} ({}): {e:#}", j.platform, j.tag);
        (0, 1)
    });
    log(&format!("test: boot test of {} ({}) done: {p} passed, {f} failed", j.platform, j.tag));
    (p, f)
}

/// The SDK container parity job: the container image built, the Hetzner
/// image built inside it into `target/ci-sdk` (the same bytes as
/// `host_out`'s, by `same`), and its as-built boot test run inside it;
/// the output in `target/ci-sdk.log`. (passed, failed) of its two checks.
fn sdk_parity(
    host_out: &Path,
    same: &(dyn Fn(&Path, &Path) -> Result<bool> + Sync),
    log: &(dyn Fn(&str) + Sync),
) -> (usize, usize) {
    let script = repo_root().join("run_sdk_container");
    let sdk_out = repo_root().join("target/ci-sdk");
    let out = repo_root().join("target/ci-sdk.log");
    log(&format!("test: SDK container image, parity build and boot, output in {}", out.display()));
    let _ = std::fs::remove_dir_all(&sdk_out);
    let output = || -> Result<(std::fs::File, std::fs::File)> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out)
            .with_context(|| format!("{}: cannot open", out.display()))?;
        Ok((f.try_clone()?, f))
    };
    let _ = std::fs::remove_file(&out);
    let built = output().and_then(|(o, e)| {
        Ok(forge::tools::command(&script)
            .arg("--build-image")
            .args(["cargo", "xtask", "build-image", "--platform", "hetzner", "--output-dir"])
            .arg(&sdk_out)
            .stdout(o)
            .stderr(e)
            .status()?
            .success())
    });
    let same_bytes = matches!(built, Ok(true)) && same(host_out, &sdk_out).unwrap_or(false);
    let mut counts = (0, 0);
    let mut count = |ok: bool, what: String| {
        println!("[{}] {} {what}", if ok { "ok" } else { "!!" }, if ok { "PASS" } else { "FAIL" });
        if ok {
            counts.0 += 1
        } else {
            counts.1 += 1
        }
    };
    count(
        same_bytes,
        format!(
            "build-image --platform hetzner inside the SDK container gives the host build's sha256{}",
            if same_bytes { String::new() } else { format!(" (see {})", out.display()) }
        ),
    );
    let json = sdk_out.join("boot-test.json");
    let booted = output().and_then(|(o, e)| {
        let mut cmd = forge::tools::command(&script);
        cmd.args(["cargo", "xtask", "boot-test"])
            .arg(sdk_out.join("flatcar_production_hetzner_image.bin.bz2"))
            .args(["--firmware", "bios", "--variant", "as-built", "--json"])
            .arg(&json)
            .stdout(o)
            .stderr(e);
        boot_reports(cmd, &json)
    });
    let (p, f) = booted.unwrap_or((0, 1));
    count(
        p > 0 && f == 0,
        format!("the BIOS boot test (as built) passes inside the SDK container — {p} checks passed, {f} failed"),
    );
    log(&format!("test: SDK container parity done: {} passed, {} failed", counts.0, counts.1));
    counts
}

/// Runs a `boot-test … --json FILE` command (its output shown as it runs)
/// and counts the checks of the reports it wrote. A run that wrote no
/// readable report, or failed with no failed check, counts as one failure.
fn boot_reports(mut cmd: std::process::Command, json: &Path) -> Result<(usize, usize)> {
    let _ = std::fs::remove_file(json);
    let st = cmd.status().context("running boot-test")?;
    let reports: Vec<forge_boottest::Report> = match std::fs::read(json) {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(r) => r,
            Err(e) => {
                println!("[!!] FAIL {}: not a boot-test report: {e}", json.display());
                return Ok((0, 1));
            }
        },
        Err(e) => {
            println!("[!!] FAIL boot-test wrote no report ({}: {e}; exit {st})", json.display());
            return Ok((0, 1));
        }
    };
    let passed: usize = reports.iter().map(forge_boottest::Report::passed).sum();
    let mut failed: usize = reports.iter().map(forge_boottest::Report::failed).sum();
    for r in &reports {
        for b in &r.boots {
            for c in &b.checks {
                println!(
                    "[{}] {} {}-{} {}: {}{}",
                    if c.ok { "ok" } else { "!!" },
                    if c.ok { "PASS" } else { "FAIL" },
                    r.arch.name(),
                    r.firmware.name(),
                    b.variant,
                    c.name,
                    if c.detail.is_empty() { String::new() } else { format!(" — {}", c.detail) }
                );
            }
        }
    }
    if reports.is_empty() || (!st.success() && failed == 0) {
        println!("[!!] FAIL boot-test exited with {st} and {} reports", reports.len());
        failed += 1;
    }
    Ok((passed, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_json(checks: &[bool]) -> String {
        let checks: Vec<serde_json::Value> = checks
            .iter()
            .enumerate()
            .map(|(i, ok)| serde_json::json!({"name": format!("c{i}"), "ok": ok, "detail": ""}))
            .collect();
        serde_json::json!([{
            "platform": "hetzner", "firmware": "bios", "arch": "x86-64", "image": "/i",
            "boots": [{"variant": "as-built", "negative": false, "seconds": 1.0,
                       "stopped_at": "END", "serial_log": "/s", "checks": checks}]
        }])
        .to_string()
    }

    #[test]
    fn boot_jobs_split_every_platform_test_without_breaking_disk_chains() {
        let oem = repo_root().join("oem");
        let mut seen = 0;
        for id in forge::oem::list(&oem) {
            let Some(spec) = forge_boottest::spec::load_for(&oem, &id).unwrap() else { continue };
            for (arch, fw) in
                spec.arch.iter().flat_map(|a| spec.firmwares(*a).into_iter().map(move |f| (*a, f)))
            {
                let groups = boot_groups(&spec, arch, fw);
                let flat: Vec<String> = groups.concat();
                let planned: Vec<String> = forge_boottest::spec::plan_arch(&spec, true, arch, fw)
                    .iter()
                    .map(|s| s.boot.variant.clone())
                    .collect();
                assert_eq!(flat, planned, "{id} {arch} {fw:?}: every boot once, in order");
                for g in &groups {
                    assert!(!g.is_empty() && g.len() <= MAX_BOOTS_PER_JOB, "{id}: {g:?}");
                    // The first boot of a group never needs a predecessor's disk.
                    let first = spec.boots.iter().find(|b| b.variant == g[0]).unwrap();
                    assert_eq!(first.disk, forge_boottest::spec::BootDisk::Fresh, "{id}: {g:?}");
                }
                seen += 1;
            }
        }
        assert!(seen >= 2, "the repository's boot tests were found");
        // Hetzner's BIOS boots are more than one job's worth.
        let spec = forge_boottest::spec::load_for(&oem, "hetzner").unwrap().unwrap();
        assert!(boot_groups(&spec, Arch::Amd64, forge_boottest::Firmware::Bios).len() >= 2);
    }

    /// A stand-in for `boot-test --json FILE`: writes `json` (if any) to FILE, exits with `rc`.
    fn fake(file: &Path, json: Option<&str>, rc: i32) -> std::process::Command {
        let mut c = forge::tools::command("sh");
        let write = match json {
            Some(j) => format!("printf '%s' '{j}' > '{}'; ", file.display()),
            None => String::new(),
        };
        c.args(["-c", &format!("{write}exit {rc}")]);
        c
    }

    #[test]
    fn boot_counts_come_from_the_json_reports() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("r.json");
        let all = report_json(&[true, true, true]);
        assert_eq!(boot_reports(fake(&f, Some(&all), 0), &f).unwrap(), (3, 0));
        let one_bad = report_json(&[true, false, true]);
        assert_eq!(boot_reports(fake(&f, Some(&one_bad), 1), &f).unwrap(), (2, 1));
        // Failed without a failed check, or no report at all: one failure.
        assert_eq!(boot_reports(fake(&f, Some(&all), 1), &f).unwrap(), (3, 1));
        assert_eq!(boot_reports(fake(&f, None, 1), &f).unwrap(), (0, 1));
        assert_eq!(boot_reports(fake(&f, Some("[]"), 0), &f).unwrap(), (0, 1));
        assert_eq!(boot_reports(fake(&f, Some("{"), 0), &f).unwrap(), (0, 1));
    }
}
