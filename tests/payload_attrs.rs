//! What a payload holds reaches the image, and nothing it says reaches the
//! host: file names never pass through a command language, special files
//! follow one rule everywhere, and owners, groups, modes (set-id, sticky),
//! extended attributes (file capabilities, ACLs) and hard links are kept,
//! the same for root and for another user.

#[path = "support/lib.rs"]
mod support;
use std::path::Path;
use support::*;

const IMAGE: &str = "flatcar_production_image.bin";
/// Start sectors of USR-A and ROOT in the base layout.
const USR_A: u64 = 2105344;
const ROOT: u64 = 12722176;

fn build(payload: &Path, out: &Path) -> std::process::Output {
    cli(&[
        "build-image",
        "--platform",
        "generic",
        "--base",
        payload.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ])
}

fn debugfs(image: &Path, start: u64, cmd: &str) -> String {
    let o = std::process::Command::new("debugfs")
        .arg("-R")
        .arg(cmd)
        .arg(format!("{}?offset={}", image.display(), start * 512))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn hostile_file_names_reach_no_command_language() {
    let tmp = open_tempdir();
    let payload = tmp.path().join("payload");
    make_payload(&payload);
    std::fs::write(payload.join("etc/hostname"), b"image-host\n").unwrap();
    let host_dir = tmp.path().join("host-side");
    std::fs::create_dir(&host_dir).unwrap();
    // Once the recipe for debugfs' command parser: a path that leaves the
    // quoted name, changes directories on the host and dumps an image file
    // there (directories supply the slashes of the host path).
    let path = format!("x\ncd etc\nlcd {}\ndump hostname PWNED\n#", host_dir.display());
    let file = payload.join("etc").join(&path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, b"just a file\n").unwrap();
    let name = path.split('/').next().unwrap().to_string();
    let out = tmp.path().join("out");
    let o = build(&payload, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!host_dir.join("PWNED").exists(), "the build wrote on the host");
    assert_eq!(std::fs::read_dir(&host_dir).unwrap().count(), 0);
    // The file is in the image under its exact name (ls -p lists names raw).
    let ls = debugfs(&out.join(IMAGE), ROOT, "ls -p /etc");
    assert!(ls.contains(&format!("/{name}/")), "{ls:?}");
}

#[test]
fn special_files_are_refused_under_usr_and_etc_alike() {
    for place in ["usr/share/pipe", "etc/pipe"] {
        let tmp = open_tempdir();
        let payload = tmp.path().join("payload");
        make_payload(&payload);
        sh(&format!("mkfifo {}", payload.join(place).display()));
        let out = tmp.path().join("out");
        let o = build(&payload, &out);
        let e = stderr(&o);
        assert!(!o.status.success(), "{place}: accepted");
        assert!(e.contains(place) && e.contains("special files"), "{place}: {e}");
        assert!(!out.join(IMAGE).exists());
    }
}

/// A `--base` tree with what packages and setcap/setfacl leave: set-gid
/// groups, sticky and private directories, capabilities, an ACL, hard links.
fn attr_payload(dir: &Path) {
    make_payload(dir);
    let w = |p: &str, data: &[u8]| {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    w("usr/bin/chage", b"chage");
    w("usr/bin/ping", b"ping");
    w("etc/hl-a", b"linked");
    w("etc/capfile", b"cap");
    w("etc/aclfile", b"acl");
    for d in ["tmp", "var/tmp", "root", "var/local"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::hard_link(dir.join("etc/hl-a"), dir.join("etc/hl-b")).unwrap();
    let d = dir.display();
    // cap_net_raw+ep, as `setcap` writes it (VFS_CAP_REVISION_2).
    let cap = "0x0100000200200000000000000000000000000000";
    // user::rwx user:1000:rw- group::r-x mask::rwx other::r-x
    let acl = "0x02000000010007000000000002000600e803000004000500ffffffff10000700ffffffff20000500ffffffff";
    sh(&format!(
        "set -e; cd {d}; chown 0:42 usr/bin/chage; chmod 2755 usr/bin/chage; chmod 755 usr/bin/ping; \
         chmod 1777 tmp var/tmp; chmod 700 root; chown 0:50 var/local; chmod 2775 var/local; \
         setfattr -n security.capability -v {cap} usr/bin/ping; \
         setfattr -n security.capability -v {cap} etc/capfile; \
         setfattr -n system.posix_acl_access -v {acl} etc/aclfile"
    ));
}

fn mode_owner(stat: &str) -> String {
    let mode = stat.split("Mode:").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let user = stat.split("User:").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let group = stat.split("Group:").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    format!("{mode} {user}:{group}")
}

fn inode(stat: &str) -> String {
    stat.split("Inode:").nth(1).unwrap().split_whitespace().next().unwrap().to_string()
}

#[test]
#[ignore = "needs root (makes a tree with other owners and capabilities, mounts the erofs read-only, builds again as uid 65534); `cargo xtask test` runs it as root"]
fn owners_groups_modes_xattrs_and_hard_links_reach_the_image() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "needs root");
    let tmp = open_tempdir();
    let payload = tmp.path().join("payload");
    attr_payload(&payload);
    let out = tmp.path().join("out");
    let o = build(&payload, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = out.join(IMAGE);

    // ROOT (ext4), judged by debugfs.
    for (p, want) in [
        ("/tmp", "01777 0:0"),
        ("/var/tmp", "01777 0:0"),
        ("/root", "0700 0:0"),
        ("/var/local", "02775 0:50"),
    ] {
        assert_eq!(mode_owner(&debugfs(&img, ROOT, &format!("stat {p}"))), want, "{p}");
    }
    let (a, b) = (debugfs(&img, ROOT, "stat /etc/hl-a"), debugfs(&img, ROOT, "stat /etc/hl-b"));
    assert_eq!(inode(&a), inode(&b), "hard links became separate files");
    assert!(a.contains("Links: 2"), "{a}");
    let caps = debugfs(&img, ROOT, "ea_list /etc/capfile");
    assert!(caps.contains("security.capability"), "{caps}");
    let acl = debugfs(&img, ROOT, "ea_list /etc/aclfile");
    assert!(acl.contains("system.posix_acl_access") || acl.contains("user:1000"), "{acl}");

    // USR (erofs), judged by the kernel.
    let usr = tmp.path().join("usr.img");
    extract_partition(&img, USR_A, 4194304, &usr);
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (ok, log) =
        sh_status(&format!("mount -o loop,ro -t erofs {} {}", usr.display(), mnt.display()));
    assert!(ok, "mounting the erofs: {log}");
    let seen = sh_status(&format!(
        "stat -c '%a %u:%g' {m}/bin/chage; getcap {m}/bin/ping",
        m = mnt.display()
    ));
    sh(&format!("umount {}", mnt.display()));
    assert!(seen.1.contains("2755 0:42"), "{}", seen.1);
    assert!(seen.1.contains("cap_net_raw=ep"), "{}", seen.1);

    // Another user cannot read a root-made tree (root/ is 0700), nor make
    // one; the same tree with its attributes as data (the sidecar the
    // recipe writes) gives that user the same image, byte for byte.
    let copy = tmp.path().join("copy");
    sh(&format!("cp -a {} {}", payload.display(), copy.display()));
    sh(&format!("chown -R 65534:65534 {}", copy.display()));
    let meta = forge::meta::Meta::scan(&payload).unwrap();
    assert_eq!(meta.entries["usr/bin/chage"].gid, 42);
    meta.save(&forge::meta::Meta::sidecar(&copy)).unwrap();
    let out2 = tmp.path().join("out-nobody");
    std::fs::create_dir(&out2).unwrap();
    sh(&format!("chown 65534:65534 {}", out2.display()));
    let (ok, log) = sh_status(&format!(
        "setpriv --reuid 65534 --regid 65534 --clear-groups env SOURCE_DATE_EPOCH=1700000000 HOME=/nonexistent {} build-image --platform generic --base {} --output-dir {}",
        cli_path().display(),
        copy.display(),
        out2.display()
    ));
    assert!(ok, "unprivileged build failed: {log}");
    let (a, b) = (out2.join(IMAGE), img.clone());
    if let Err(first) = compare_files(&a, &b) {
        let keep = tmp.keep();
        panic!("root's and uid 65534's images differ: {first} (kept in {})", keep.display());
    }
}
