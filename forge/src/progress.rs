//! Progress of long steps. A front end may pass a sink (e.g. progress bars
//! on a terminal); without one, steps are logged every 10 %.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// Gets (step, bytes done, bytes total).
pub type Sink = Arc<dyn Fn(&str, u64, u64) + Send + Sync>;

/// A reporter for one thread: the sink if there is one, else log lines.
pub fn reporter<'a>(sink: Option<&'a Sink>, log: &'a dyn Fn(&str)) -> impl Fn(&str, u64, u64) + 'a {
    let last: RefCell<HashMap<String, u64>> = RefCell::new(HashMap::new());
    move |step: &str, done: u64, total: u64| match sink {
        Some(f) => f(step, done, total),
        None => {
            let pct = done * 100 / total.max(1);
            let mut last = last.borrow_mut();
            let l = last.entry(step.to_string()).or_insert(0);
            if pct >= *l + 10 || (pct == 100 && *l < 100) {
                *l = pct;
                log(&format!("{step}: {pct}%"));
            }
        }
    }
}
