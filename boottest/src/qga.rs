//! The host end of QEMU's guest agent protocol: JSON commands, one per
//! line, over the chardev of the guest's `org.qemu.guest_agent.0` port (a
//! loopback TCP socket QEMU listens on). Every request is preceded by the
//! protocol's `guest-sync-delimited` handshake (a 0xFF byte resets the
//! agent's parser; the answer echoes a fresh id after a 0xFF), so a stale
//! answer or a half-read line of an earlier attempt is never taken for
//! the reply.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long one attempt waits for the handshake's answer.
const SYNC_WAIT: Duration = Duration::from_secs(5);

/// How long a command may take once the agent is in sync.
const REPLY_WAIT: Duration = Duration::from_secs(60);

/// Sends `request` (`{"execute": …, "arguments": …}`) to the agent behind
/// 127.0.0.1:`port`, retrying the handshake until `wait` has passed (the
/// agent starts when the guest's systemd sees its port). The reply's
/// `return`, as JSON; an `error` reply is an error naming its class.
pub fn request(port: u16, request: &serde_json::Value, wait: Duration) -> Result<String> {
    let start = Instant::now();
    let mut id = u64::from(std::process::id()) << 16;
    let mut last = anyhow!("no attempt");
    while start.elapsed() < wait {
        id += 1;
        match attempt(port, request, id) {
            Ok(Reply::Return(v)) => return Ok(v),
            Ok(Reply::Error(e)) => bail!("{e}"),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Err(last.context(format!("the guest agent did not answer within {}s", wait.as_secs())))
}

enum Reply {
    Return(String),
    Error(String),
}

fn attempt(port: u16, request: &serde_json::Value, id: u64) -> Result<Reply> {
    let s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))
        .with_context(|| format!("connecting to the guest agent channel at 127.0.0.1:{port}"))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    r.get_ref().set_read_timeout(Some(SYNC_WAIT))?;
    let sync = serde_json::json!({"execute": "guest-sync-delimited", "arguments": {"id": id}});
    w.write_all(&[0xff])?;
    w.write_all(format!("{sync}\n").as_bytes())?;
    let deadline = Instant::now() + SYNC_WAIT;
    loop {
        let v = read_json(&mut r).context("waiting for the guest agent's sync answer")?;
        if v.get("return").and_then(|x| x.as_u64()) == Some(id) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the guest agent's answers do not echo the sync id {id}");
        }
    }
    r.get_ref().set_read_timeout(Some(REPLY_WAIT))?;
    w.write_all(format!("{request}\n").as_bytes())?;
    let v = read_json(&mut r).context("waiting for the guest agent's reply")?;
    if let Some(ret) = v.get("return") {
        return Ok(Reply::Return(ret.to_string()));
    }
    if let Some(e) = v.get("error") {
        let class = e.get("class").and_then(|c| c.as_str()).unwrap_or("?");
        let desc = e.get("desc").and_then(|c| c.as_str()).unwrap_or("");
        return Ok(Reply::Error(format!("{class}: {desc}")));
    }
    bail!("a reply that is neither a return nor an error: {v}")
}

/// The next line that is a JSON object (0xFF delimiters and blank lines skipped).
fn read_json(r: &mut BufReader<TcpStream>) -> Result<serde_json::Value> {
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            bail!("the channel closed");
        }
        let text: Vec<u8> = line.into_iter().filter(|b| *b != 0xff).collect();
        let text = String::from_utf8_lossy(&text);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        if let Ok(v @ serde_json::Value::Object(_)) = serde_json::from_str(text) {
            return Ok(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A fake agent: answers the handshake (after a stale answer of an
    /// earlier sync), then replies to the command with `reply`.
    fn agent(reply: &'static str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut line = Vec::new();
            r.read_until(b'\n', &mut line).unwrap();
            let text: Vec<u8> = line.into_iter().filter(|b| *b != 0xff).collect();
            let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
            assert_eq!(v["execute"], "guest-sync-delimited");
            let id = v["arguments"]["id"].as_u64().unwrap();
            w.write_all(b"{\"return\": 7}\n").unwrap();
            w.write_all(&[0xff]).unwrap();
            w.write_all(format!("{{\"return\": {id}}}\n").as_bytes()).unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["execute"], "guest-set-user-password");
            assert_eq!(v["arguments"]["username"], "root");
            w.write_all(reply.as_bytes()).unwrap();
        });
        port
    }

    #[test]
    fn syncs_then_returns_the_reply() {
        let req = serde_json::json!({"execute": "guest-set-user-password", "arguments": {"username": "root", "password": "cHc=", "crypted": false}});
        let port = agent("{\"return\": {}}\n");
        assert_eq!(request(port, &req, Duration::from_secs(10)).unwrap(), "{}");
        let port = agent("{\"error\": {\"class\": \"GenericError\", \"desc\": \"child process has failed to set user password\"}}\n");
        let e = request(port, &req, Duration::from_secs(10)).unwrap_err().to_string();
        assert_eq!(e, "GenericError: child process has failed to set user password");
    }

    #[test]
    fn no_agent_is_an_error_after_the_wait() {
        // A listener that never answers.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = Instant::now();
        let e =
            request(port, &serde_json::json!({"execute": "guest-ping"}), Duration::from_secs(3))
                .unwrap_err();
        assert!(format!("{e:#}").contains("did not answer within 3s"), "{e:#}");
        assert!(t.elapsed() < Duration::from_secs(15));
        drop(l);
    }
}
