//! The bzip2 stream splitter and parallel decoder that read foreign `.bz2`
//! files (`io::compress::Streams`, `decode_streams`).
//!
//! The first byte picks a mode:
//! - even: the rest is a file as is. Oracles: no panic; the streams the
//!   splitter returns, concatenated, are exactly the input (nothing lost,
//!   nothing invented); when `decode_streams` accepts it, a plain
//!   multi-stream decoder reads the same bytes.
//! - odd: the rest is split at 0xff bytes into pieces, each compressed as
//!   its own stream (level from the first byte) and concatenated: a valid
//!   multi-stream file, which `decode_streams` must accept and decode to
//!   the pieces' concatenation, like decoding it whole.
//!
//! Inputs are capped at 16 KiB (a few bytes of bzip2 can decode to tens of
//! MB; the cap keeps every run's memory bounded).
#![no_main]

use forge::io::codec::Codec;
use forge::io::compress::{decode_streams, Decoded, Streams};
use libfuzzer_sys::fuzz_target;
use std::io::Read;

const MAX_INPUT: usize = 16 << 10;
/// Decoded bytes compared at most: a few bytes of bzip2 decode to many MB,
/// and runs that large would slow the search down for nothing.
const MAX_OUTPUT: usize = 16 << 20;

/// `decode_streams` with the pieces reassembled in memory (zero runs
/// materialized); `Err` past `MAX_OUTPUT`.
fn split_decode(file: &[u8], threads: usize) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let n = decode_streams(file, threads, &mut |pos, piece| {
        assert_eq!(pos, out.len() as u64, "pieces out of order");
        let len = match &piece {
            Decoded::Data(d) => d.len(),
            Decoded::Zeros(z) => *z as usize,
        };
        if out.len() + len > MAX_OUTPUT {
            anyhow::bail!("more than {MAX_OUTPUT} B decoded");
        }
        match piece {
            Decoded::Data(d) => out.extend_from_slice(&d),
            Decoded::Zeros(z) => out.resize(out.len() + z as usize, 0),
        }
        Ok(())
    })?;
    assert_eq!(n, out.len() as u64, "decode_streams' length differs from its pieces");
    Ok(out)
}

fn whole_decode(file: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    Codec::Bz2.reader(file).expect("a bzip2 reader").read_to_end(&mut out)?;
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() || data.len() > MAX_INPUT {
        return;
    }
    let (mode, rest) = (data[0], &data[1..]);
    if mode % 2 == 0 {
        let mut streams = Streams::new(rest);
        let mut joined = Vec::new();
        loop {
            match streams.next_stream() {
                Ok(Some(s)) => {
                    assert!(!s.is_empty(), "an empty stream");
                    joined.extend_from_slice(&s);
                }
                Ok(None) => {
                    assert!(joined == rest, "the streams are not the input's bytes");
                    break;
                }
                Err(_) => {
                    assert!(rest.starts_with(&joined), "the streams are not the input's bytes");
                    break;
                }
            }
        }
        if let Ok(split) = split_decode(rest, 1 + (mode as usize / 2) % 3) {
            let whole = whole_decode(rest).expect("decode_streams accepted what bzip2 refuses");
            assert!(split == whole, "split decoding differs from whole decoding");
        }
    } else {
        let level = 1 + u32::from(mode / 2) % 9;
        let mut file = Vec::new();
        let mut plain = Vec::new();
        for piece in rest.split(|&b| b == 0xff) {
            file.extend_from_slice(&Codec::Bz2.encode(piece, level).expect("encoding"));
            plain.extend_from_slice(piece);
        }
        let whole = whole_decode(&file).expect("decoding our own multi-stream file");
        assert!(whole == plain, "bzip2 round trip");
        let split = split_decode(&file, 2).expect("decode_streams refused a valid file");
        assert!(split == plain, "split decoding differs from the input");
    }
});
