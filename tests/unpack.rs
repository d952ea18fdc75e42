// Contained unpacking of crafted Debian packages: symlink escapes, `..` and
// absolute entry paths, hard links out of the tree, device nodes, and a
// recipe's local packages. The packages are written here (ar + tar, with
// raw tar headers so paths dpkg-deb --build refuses can be made) and read
// back through the real `dpkg-deb --fsys-tarfile`.

use std::cell::RefCell;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Sym(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Fifo(&'a str),
}

/// A tar archive with the entries' names written byte for byte (no checks).
fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (name, kind, link, data): (&str, tar::EntryType, &str, &[u8]) = match e {
            E::Dir(n) => (n, tar::EntryType::Directory, "", b""),
            E::File(n, d) => (n, tar::EntryType::Regular, "", d),
            E::Sym(n, t) => (n, tar::EntryType::Symlink, t, b""),
            E::Hard(n, t) => (n, tar::EntryType::Link, t, b""),
            E::Fifo(n) => (n, tar::EntryType::Fifo, "", b""),
        };
        let mut h = tar::Header::new_gnu();
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// An ar archive (the .deb container) of (name, data) members.
fn ar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = b"!<arch>\n".to_vec();
    for (name, data) in members {
        let h = format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 0, 0, 0, "100644", data.len());
        assert_eq!(h.len(), 60);
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    out
}

/// Writes `<dir>/<name>.deb` with `entries` as its data archive.
fn deb(dir: &Path, name: &str, entries: &[E]) -> PathBuf {
    let control = format!(
        "Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: Test <test@example.org>\nDescription: crafted\n"
    );
    let control_tar = tar_of(&[E::Dir("./"), E::File("./control", control.as_bytes())]);
    let data = tar_of(entries);
    let p = dir.join(format!("{name}.deb"));
    std::fs::write(
        &p,
        ar_of(&[("debian-binary", b"2.0\n"), ("control.tar", &control_tar), ("data.tar", &data)]),
    )
    .unwrap();
    p
}

struct Case {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    dest: PathBuf,
}

fn case() -> Case {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let dest = dir.join("dest");
    std::fs::create_dir(&dest).unwrap();
    Case { _tmp: tmp, dir, dest }
}

/// A name no other run uses, for escape targets outside the temp dir.
fn unique(tag: &str) -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    format!("forge-unpack-test-{tag}-{}-{}", std::process::id(), t.as_nanos())
}

/// Unpacks and returns (result as "{:#}" text, warnings).
fn unpack(deb: &Path, dest: &Path) -> (Result<(), String>, Vec<String>) {
    let warnings = RefCell::new(Vec::new());
    let r = forge::unpack::unpack_deb(deb, dest, &|w| warnings.borrow_mut().push(w.to_string()))
        .map_err(|e| format!("{e:#}"));
    (r, warnings.into_inner())
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, p: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(p).unwrap() {
            let path = e.unwrap().path();
            out.push(path.strip_prefix(root).unwrap().display().to_string());
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

fn assert_error(r: &Result<(), String>, deb: &Path, entry: &str, problem: &str) {
    let e = r.as_ref().expect_err("the package must be refused");
    let file = deb.file_name().unwrap().to_string_lossy();
    assert!(e.contains(&*file), "error does not name the package {file}: {e}");
    assert!(e.contains(&format!("'{entry}'")), "error does not name the entry {entry}: {e}");
    assert!(e.contains(problem), "error does not say '{problem}': {e}");
}

#[test]
fn absolute_symlink_then_file_stays_inside() {
    let c = case();
    let outside = PathBuf::from("/tmp").join(unique("abs"));
    let target = outside.display().to_string();
    let d = deb(
        &c.dir,
        "abs-escape",
        &[
            E::Dir("./usr/"),
            E::Dir("./usr/share/"),
            E::Sym("./usr/share/x", &target),
            E::File("./usr/share/x/f", b"payload"),
        ],
    );
    let (r, _) = unpack(&d, &c.dest);
    assert!(!outside.exists(), "{} was created outside the destination", outside.display());
    r.unwrap();
    // Resolved with the destination as root: /tmp/<unique> is <dest>/tmp/<unique>.
    let inside = c.dest.join(target.trim_start_matches('/')).join("f");
    assert_eq!(std::fs::read(&inside).unwrap(), b"payload");
    assert_eq!(std::fs::read_link(c.dest.join("usr/share/x")).unwrap(), outside);
}

#[test]
fn relative_symlink_then_file_stays_inside() {
    let c = case();
    // From <dest>/usr/share, ../../../escape is <dest>/../escape on the host:
    // a sibling of the destination, which must stay absent.
    let d = deb(
        &c.dir,
        "rel-escape",
        &[
            E::Dir("./usr/"),
            E::Dir("./usr/share/"),
            E::Sym("./usr/share/x", "../../../../../../escape"),
            E::File("./usr/share/x/f", b"payload"),
            E::Sym("./usr/share/y", "../../../escape2"),
            E::Dir("./usr/share/y/sub/"),
        ],
    );
    let (r, _) = unpack(&d, &c.dest);
    assert_eq!(tree(&c.dir), tree_expect_rel(), "something was written beside the destination");
    r.unwrap();
    assert_eq!(std::fs::read(c.dest.join("escape/f")).unwrap(), b"payload");
    assert!(c.dest.join("escape2/sub").is_dir());
    assert!(std::fs::symlink_metadata(c.dest.join("usr/share/y")).unwrap().is_symlink());
}

fn tree_expect_rel() -> Vec<String> {
    let mut v: Vec<String> = [
        "dest",
        "dest/escape",
        "dest/escape/f",
        "dest/escape2",
        "dest/escape2/sub",
        "dest/usr",
        "dest/usr/share",
        "dest/usr/share/x",
        "dest/usr/share/y",
        "rel-escape.deb",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.sort();
    v
}

#[test]
fn var_run_symlink_resolves_inside_the_destination() {
    let c = case();
    let name = unique("run");
    let entry = format!("./var/run/{name}");
    let d = deb(
        &c.dir,
        "base-files-like",
        &[
            E::Dir("./var/"),
            E::Sym("./var/run", "/run"),
            E::File(&entry, b"pid"),
            E::Dir("./var/run/sub/"),
        ],
    );
    let (r, _) = unpack(&d, &c.dest);
    assert!(!Path::new("/run").join(&name).exists(), "/run/{name} was written on the host");
    r.unwrap();
    assert_eq!(std::fs::read(c.dest.join("run").join(&name)).unwrap(), b"pid");
    assert!(c.dest.join("run/sub").is_dir());
    assert_eq!(std::fs::read_link(c.dest.join("var/run")).unwrap(), Path::new("/run"));
}

#[test]
fn dotdot_entries_are_refused() {
    for (i, entry) in ["./../escaped", "./usr/../../escaped", "../escaped"].iter().enumerate() {
        let c = case();
        let d = deb(&c.dir, &format!("dotdot{i}"), &[E::Dir("./usr/"), E::File(entry, b"x")]);
        let (r, _) = unpack(&d, &c.dest);
        assert_error(&r, &d, entry, "'..'");
        assert!(!c.dir.join("escaped").exists(), "{entry} escaped the destination");
        assert!(!c.dest.join("escaped").exists());
    }
}

#[test]
fn absolute_entries_are_refused() {
    let c = case();
    let outside = PathBuf::from("/tmp").join(unique("absentry"));
    let entry = format!("{}/f", outside.display());
    let d = deb(&c.dir, "absolute", &[E::File(&entry, b"x")]);
    let (r, _) = unpack(&d, &c.dest);
    assert_error(&r, &d, &entry, "absolute path");
    assert!(!outside.exists(), "{} was created", outside.display());
    assert!(tree(&c.dest).is_empty());
}

#[test]
fn hard_links_out_of_the_tree_are_refused() {
    let c = case();
    // An outside file we own: its link count shows any link made to it.
    let secret = c.dir.join("secret");
    std::fs::write(&secret, b"secret").unwrap();
    for (i, (target, problem)) in [
        ("/etc/shadow", "absolute path"),
        ("../../etc/shadow", "'..'"),
        ("./usr/../../secret", "'..'"),
        ("../secret", "'..'"),
    ]
    .iter()
    .enumerate()
    {
        let d = deb(
            &c.dir,
            &format!("hardlink{i}"),
            &[E::Dir("./etc/"), E::Hard("./etc/shadow-copy", target)],
        );
        let (r, _) = unpack(&d, &c.dest);
        assert_error(&r, &d, "./etc/shadow-copy", problem);
        assert!(r.unwrap_err().contains(target), "the error names the link target");
        assert!(!c.dest.join("etc/shadow-copy").exists());
        assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 1);
    }
}

#[test]
fn hard_links_inside_the_tree_work() {
    let c = case();
    let d = deb(
        &c.dir,
        "hardlink-ok",
        &[
            E::Dir("./usr/"),
            E::Dir("./usr/bin/"),
            E::File("./usr/bin/a", b"binary"),
            E::Hard("./usr/bin/b", "./usr/bin/a"),
        ],
    );
    let (r, _) = unpack(&d, &c.dest);
    r.unwrap();
    let (a, b) = (c.dest.join("usr/bin/a"), c.dest.join("usr/bin/b"));
    assert_eq!(std::fs::metadata(&a).unwrap().ino(), std::fs::metadata(&b).unwrap().ino());
    assert_eq!(std::fs::metadata(&a).unwrap().nlink(), 2);
}

#[test]
fn fifos_are_skipped_with_a_warning() {
    let c = case();
    let d = deb(&c.dir, "fifo", &[E::Dir("./run/"), E::Fifo("./run/initctl")]);
    let (r, warnings) = unpack(&d, &c.dest);
    r.unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("fifo.deb") && warnings[0].contains("'./run/initctl'"));
    assert!(warnings[0].contains("fifo skipped"), "{}", warnings[0]);
    assert!(!c.dest.join("run/initctl").exists());
}

#[test]
fn symlink_loops_are_an_error() {
    let c = case();
    let d = deb(&c.dir, "loop", &[E::Sym("./a", "b"), E::Sym("./b", "a"), E::File("./a/f", b"x")]);
    let (r, _) = unpack(&d, &c.dest);
    assert_error(&r, &d, "./a/f", "more than 40 symbolic links");
}

#[test]
fn a_broken_package_names_the_file_and_dpkg_debs_complaint() {
    let c = case();
    let p = c.dir.join("broken.deb");
    std::fs::write(&p, b"this is not an ar archive").unwrap();
    let (r, _) = unpack(&p, &c.dest);
    let e = r.unwrap_err();
    assert!(e.contains("broken.deb") && e.contains("dpkg-deb --fsys-tarfile failed"), "{e}");
}

#[test]
fn a_recipes_local_packages_land_in_the_payload() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe_dir = tmp.path().join("local-only");
    // A package built by dpkg-deb itself.
    let pkg = tmp.path().join("pkg");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("usr/lib/site-agent")).unwrap();
    std::fs::write(pkg.join("usr/lib/site-agent/agent.conf"), b"site=1\n").unwrap();
    // A link out of the tree that the overlay then writes below.
    let outside = PathBuf::from("/tmp").join(unique("overlay"));
    std::fs::create_dir_all(pkg.join("etc")).unwrap();
    std::os::unix::fs::symlink(&outside, pkg.join("etc/agent")).unwrap();
    std::fs::create_dir_all(recipe_dir.join("overlay/etc/agent")).unwrap();
    std::fs::write(recipe_dir.join("overlay/etc/agent/site.conf"), b"overlay\n").unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        "Package: site-agent\nVersion: 2.3-1\nArchitecture: all\nMaintainer: Site <ops@example.org>\nDescription: a site's agent\n",
    )
    .unwrap();
    std::fs::create_dir_all(recipe_dir.join("debs")).unwrap();
    let out = std::process::Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&pkg)
        .arg(recipe_dir.join("debs/local.deb"))
        .output()
        .expect("run dpkg-deb");
    assert!(out.status.success(), "dpkg-deb --build: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(recipe_dir.join("kind"), "rootfs\n").unwrap();

    let recipe = forge::recipe::Recipe::load(&recipe_dir, forge::arch::Arch::Amd64).unwrap();
    assert!(recipe.packages.is_empty());
    assert_eq!(recipe.local_debs, vec![recipe_dir.join("debs/local.deb")]);
    let cache = forge::recipe::Cache { root: tmp.path().join("cache") };
    let root = forge::recipe::build(&recipe, &cache, 1_700_000_000, &|_| {}, &|_, _, _| {})
        .expect("build a payload from local packages only");
    assert_eq!(std::fs::read(root.join("usr/lib/site-agent/agent.conf")).unwrap(), b"site=1\n");
    assert!(!outside.exists(), "the overlay wrote through a link to {}", outside.display());
    let inside = root.join(outside.strip_prefix("/").unwrap()).join("site.conf");
    assert_eq!(std::fs::read(inside).unwrap(), b"overlay\n");
    assert_eq!(std::fs::read_link(root.join("etc/agent")).unwrap(), outside);
    let lock = std::fs::read_to_string(root.parent().unwrap().join("packages.lock")).unwrap();
    assert_eq!(lock, "site-agent 2.3-1 debs/local.deb\n");

    // The package is part of the recipe's hash.
    let before = recipe.hash().unwrap();
    std::fs::write(pkg.join("usr/lib/site-agent/agent.conf"), b"site=2\n").unwrap();
    let out = std::process::Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&pkg)
        .arg(recipe_dir.join("debs/local.deb"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_ne!(recipe.hash().unwrap(), before, "a changed local package changes the hash");
}
