//! Log lines with elapsed time, and progress bars when stderr is a terminal.

use std::sync::Mutex;
use std::time::Instant;

/// The progress bar being drawn, and its step.
static BAR: Mutex<Option<(String, indicatif::ProgressBar)>> = Mutex::new(None);

/// A log function: each line prefixed with the seconds since it was made.
pub fn logger() -> impl Fn(&str) {
    let start = Instant::now();
    move |m: &str| {
        let line = format!("[{:>7.2}s] {m}", start.elapsed().as_secs_f64());
        // Above the progress bar, if one is drawn, not through it.
        match BAR.lock().unwrap().as_ref() {
            Some((_, b)) if !b.is_finished() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }
}

/// Ends the progress bar's line, if one was drawn, before a summary.
pub fn end_bars() {
    if let Some((_, b)) = BAR.lock().unwrap().take() {
        b.finish();
        eprintln!();
    }
}

/// Progress bars with throughput and ETA when stderr is a terminal; None
/// (plain log lines) otherwise.
pub fn progress_bars() -> Option<forge::progress::Sink> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(std::sync::Arc::new(move |step: &str, done: u64, total: u64| {
        let mut cur = BAR.lock().unwrap();
        if cur.as_ref().map(|(s, _)| s.as_str()) != Some(step) {
            if let Some((_, b)) = cur.take() {
                b.finish();
            }
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>11} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .unwrap()
                .progress_chars("=> "),
            );
            b.set_message(step.to_string());
            *cur = Some((step.to_string(), b));
        }
        let (_, b) = cur.as_ref().unwrap();
        b.set_length(total);
        b.set_position(done);
        if done >= total {
            b.finish();
        }
    }))
}
