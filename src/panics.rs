//! Panics contained: a bug that panics while handling one connection, one
//! shard message, one shard task, one hook call or one broker message is
//! logged with where it happened, counted (`ringcast_panics_total{where}`),
//! and the gateway goes on serving everything else. What was being done is
//! lost (a reply channel dropped reads as an error to whoever waited).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Where a panic was contained: the `where` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    /// A connection's input, effects or flush (the connection is closed).
    Connection,
    /// A shard task: a handshake, a hook's wait, a timer.
    ShardTask,
    /// One message of a shard's inbox (a delivery, a push, an admin change).
    Inbox,
    /// A task of the integration thread: a hook call, an API or RPC connection.
    Integration,
    /// One message from the cluster's broker, or a broker task.
    Broker,
}

impl Where {
    pub const ALL: [Where; 5] =
        [Where::Connection, Where::ShardTask, Where::Inbox, Where::Integration, Where::Broker];

    pub fn label(self) -> &'static str {
        match self {
            Where::Connection => "connection",
            Where::ShardTask => "shard_task",
            Where::Inbox => "inbox",
            Where::Integration => "integration",
            Where::Broker => "broker",
        }
    }
}

static COUNTS: [AtomicU64; Where::ALL.len()] = [const { AtomicU64::new(0) }; Where::ALL.len()];

/// Panics contained at `site` since the start.
pub fn count(site: Where) -> u64 {
    COUNTS[site as usize].load(Relaxed)
}

/// Counts and logs a contained panic. (The default panic hook has already
/// printed where in the code it happened.)
pub fn record(site: Where, payload: &(dyn Any + Send)) {
    COUNTS[site as usize].fetch_add(1, Relaxed);
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    tracing::error!(site = site.label(), panic = message, "a panic was contained; serving on");
}

/// Runs `f`; a panic in it is recorded and becomes None.
pub fn contain<T>(site: Where, f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(payload) => {
            record(site, &*payload);
            None
        }
    }
}

/// `fut`, with a panic while polling it recorded and turned into None.
pub async fn contained<T>(site: Where, fut: impl Future<Output = T>) -> Option<T> {
    use futures_lite::FutureExt;
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(v) => Some(v),
        Err(payload) => {
            record(site, &*payload);
            None
        }
    }
}

/// A detached tokio task whose panic is contained at `site`.
pub fn spawn_tokio(site: Where, fut: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(contained(site, fut));
}

/// Test builds only: panics here when the environment variable
/// `RINGCAST_INJECT_PANIC` names `site`'s label (comma-separated list), so
/// the integration tests can prove each site is contained. A release
/// build never reads the variable.
pub fn inject(site: Where) {
    #[cfg(debug_assertions)]
    {
        static SITES: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let sites = SITES.get_or_init(|| std::env::var("RINGCAST_INJECT_PANIC").unwrap_or_default());
        if sites.split(',').any(|s| s == site.label()) {
            panic!("injected panic at {} (RINGCAST_INJECT_PANIC)", site.label());
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = site;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_counted_and_becomes_none() {
        let before = count(Where::Broker);
        assert_eq!(contain(Where::Broker, || 7), Some(7));
        assert_eq!(contain(Where::Broker, || -> u8 { panic!("boom") }), None);
        assert_eq!(contain(Where::Broker, || -> u8 { panic!("{}", String::from("formatted")) }), None);
        assert_eq!(count(Where::Broker), before + 2);
    }

    #[test]
    fn a_panicking_tokio_task_leaves_the_runtime_serving() {
        let before = count(Where::Integration);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            spawn_tokio(Where::Integration, async move {
                let _held = tx;
                panic!("in a task");
            });
            assert!(rx.await.is_err(), "the waiter sees the task gone");
            let ok = contained(Where::Integration, async { 1 }).await;
            assert_eq!(ok, Some(1));
        });
        assert_eq!(count(Where::Integration), before + 1);
    }
}
