//! systemd integration (`Type=notify`): READY when listening, WATCHDOG pings at half the
//! configured interval while the runtime is responsive, STOPPING at shutdown. Outside systemd
//! (no `NOTIFY_SOCKET`) every call is a no-op.

use sd_notify::NotifyState;
use std::time::Duration;

pub fn ready() {
    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
}

pub fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// Pings the watchdog until the task is dropped, if systemd asked for one.
pub async fn watchdog() {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        std::future::pending::<()>().await;
    }
    let period = Duration::from_micros(usec / 2);
    loop {
        let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
        tokio::time::sleep(period).await;
    }
}
