//! QEMU's monitor protocol (QMP), for what a boot does to a running VM:
//! attaching a disk (`blockdev-add`, then `device_add`), as Hetzner attaches
//! a volume to a running server. QEMU listens on a loopback port
//! (`-qmp tcp:127.0.0.1:PORT,server=on,wait=off`); one connection per
//! request, capabilities negotiated first, events skipped.

use crate::spec::{Disk, DiskDevice};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// Attaches `file` as the SCSI disk `d` (its vendor, product and serial)
/// under the node and device name `id`.
pub fn hotplug(port: u16, id: &str, file: &Path, d: &Disk) -> Result<()> {
    if d.device != DiskDevice::ScsiHd {
        bail!("only scsi-hd disks are hot-plugged");
    }
    let mut dev = serde_json::json!({
        "driver": "scsi-hd", "id": id, "drive": id, "bus": "scsi0.0",
    });
    for (k, v) in [("vendor", &d.vendor), ("product", &d.product), ("serial", &d.serial)] {
        if let Some(v) = v {
            dev[k] = v.as_str().into();
        }
    }
    let node = serde_json::json!({
        "node-name": id,
        "driver": "raw",
        "file": { "driver": "file", "filename": file.to_str().context("a non-UTF-8 disk path")? },
    });
    let mut s = Session::open(port)?;
    s.execute("blockdev-add", node)?;
    s.execute("device_add", dev)?;
    Ok(())
}

struct Session {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Session {
    fn open(port: u16) -> Result<Session> {
        let s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))
            .with_context(|| format!("connecting to QEMU's monitor at 127.0.0.1:{port}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut me = Session { w: s.try_clone()?, r: BufReader::new(s) };
        let greeting = me.read()?;
        if greeting.get("QMP").is_none() {
            bail!("not QEMU's monitor: {greeting}");
        }
        me.execute("qmp_capabilities", serde_json::json!({}))?;
        Ok(me)
    }

    fn read(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            bail!("QEMU's monitor closed the connection");
        }
        serde_json::from_str(&line).with_context(|| format!("QEMU's monitor said {line:?}"))
    }

    /// Runs a command; its `return`, or its error as the error.
    fn execute(&mut self, cmd: &str, arguments: serde_json::Value) -> Result<serde_json::Value> {
        let req = serde_json::json!({ "execute": cmd, "arguments": arguments });
        self.w.write_all(format!("{req}\n").as_bytes())?;
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            let desc = v["error"]["desc"].as_str().unwrap_or("?").to_string();
            bail!("{cmd}: {desc}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A fake monitor: greets, then answers each command in turn from
    /// `replies` (an event before each), recording what it was sent.
    fn monitor(
        replies: Vec<&'static str>,
    ) -> (u16, std::thread::JoinHandle<Vec<serde_json::Value>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n").unwrap();
            let mut got = Vec::new();
            for reply in replies {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                got.push(serde_json::from_str(&line).unwrap());
                w.write_all(b"{\"event\": \"DEVICE_TRAY_MOVED\"}\n").unwrap();
                w.write_all(reply.as_bytes()).unwrap();
            }
            got
        });
        (port, t)
    }

    fn volume() -> Disk {
        serde_json::from_value(serde_json::json!({"source": {"blank": {"bytes": 1048576}}, "device": "scsi-hd", "vendor": "HC", "product": "Volume", "serial": "7"})).unwrap()
    }

    #[test]
    fn attaches_the_file_as_the_disk_it_declares() {
        let ok = "{\"return\": {}}\n";
        let (port, t) = monitor(vec![ok, ok, ok]);
        hotplug(port, "hot0", Path::new("/w/vol.raw"), &volume()).unwrap();
        let got = t.join().unwrap();
        assert_eq!(got[0]["execute"], "qmp_capabilities");
        assert_eq!(got[1]["execute"], "blockdev-add");
        assert_eq!(got[1]["arguments"]["file"]["filename"], "/w/vol.raw");
        assert_eq!(got[2]["execute"], "device_add");
        assert_eq!(
            got[2]["arguments"],
            serde_json::json!({"driver": "scsi-hd", "id": "hot0", "drive": "hot0", "bus": "scsi0.0", "vendor": "HC", "product": "Volume", "serial": "7"})
        );
    }

    #[test]
    fn qemus_error_is_the_error() {
        let ok = "{\"return\": {}}\n";
        let err = "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Duplicate nodes with node-name='hot0'\"}}\n";
        let (port, _t) = monitor(vec![ok, err]);
        let e = hotplug(port, "hot0", Path::new("/w/vol.raw"), &volume()).unwrap_err();
        assert_eq!(e.to_string(), "blockdev-add: Duplicate nodes with node-name='hot0'");
    }
}
