//! The connection to the manager: opened, watched, and re-established
//! with backoff after any loss.

use super::*;

/// Run until shutdown: connect, serve signals, and reconnect after a loss.
pub(super) async fn supervise(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(Policy::new(inner.opts.backoff_min, inner.opts.backoff_max));
    let mut ever_connected = false;
    loop {
        let attempt = tokio::select! {
            r = tokio::time::timeout(inner.opts.call_timeout, Session::open(&inner.opts)) => r,
            _ = shutdown.changed() => break,
        };
        let session = match attempt {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => {
                inner.set_error(e.to_string());
                wait_or_shutdown(backoff.next_wait(), &mut shutdown).await;
                if *shutdown.borrow() {
                    break;
                }
                continue;
            }
            Err(_) => {
                inner.set_error("connection attempt timed out".to_owned());
                wait_or_shutdown(backoff.next_wait(), &mut shutdown).await;
                if *shutdown.borrow() {
                    break;
                }
                continue;
            }
        };
        backoff.reset();
        if ever_connected {
            inner
                .reconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(target = %inner.opts.target, "reconnected to systemd ({})", inner.opts.target);
        } else {
            tracing::debug!(target = %inner.opts.target, "connected to systemd");
        }
        ever_connected = true;
        let Session {
            conn,
            mut signals,
            mut owner_changes,
            owner,
            version,
        } = session;
        let before = inner
            .version
            .swap(version, std::sync::atomic::Ordering::Relaxed);
        if before != version {
            tracing::info!(
                target = %inner.opts.target,
                "systemd {version}{}",
                if version < crate::unit::props::RESTART_STEPS_SINCE {
                    format!(
                        ": no RestartSteps= (since {}), so the launcher paces growing restart delays",
                        crate::unit::props::RESTART_STEPS_SINCE
                    )
                } else {
                    String::new()
                }
            );
        }
        inner.conn.send_replace(Some(conn.clone()));
        inner.state.send_replace(ConnectionState::Connected);

        // Listing after subscribing: every change after this list arrives
        // as a signal, so consumers can take the list as the whole truth.
        let seen = inner.hub.mark();
        match inner.list_units().await {
            Ok(units) => inner.hub.resynced(units, seen),
            Err(e) => tracing::warn!(error = %e, "listing units after connecting failed: {e}"),
        }

        let reason = loop {
            tokio::select! {
                msg = signals.next() => match msg {
                    Some(Ok(msg)) => inner.dispatch(&msg),
                    Some(Err(e)) => tracing::debug!(error = %e, "undecodable message"),
                    None => break "connection closed".to_owned(),
                },
                change = next_owner_change(&mut owner_changes, owner.as_deref()) => {
                    break format!("systemd's bus name changed owner ({change})");
                }
                _ = shutdown.changed() => break "shutdown".to_owned(),
            }
        };
        inner.conn.send_replace(None);
        inner.hub.disconnected();
        if *shutdown.borrow() {
            break;
        }
        tracing::warn!(target = %inner.opts.target, "lost systemd ({reason}); reconnecting");
        inner.set_error(reason);
        inner.state.send_replace(ConnectionState::Disconnected);
        drop(conn);
        wait_or_shutdown(backoff.next_wait(), &mut shutdown).await;
        if *shutdown.borrow() {
            break;
        }
    }
    inner.conn.send_replace(None);
    inner.state.send_replace(ConnectionState::Closed);
}

pub(super) async fn wait_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.changed() => {}
    }
}

/// Resolves when systemd's bus name passes to anyone but `owner` (the
/// manager restarted or re-executed). Changes to `owner` itself are the
/// acquisition we already know of, queued before we asked.
pub(super) async fn next_owner_change(
    stream: &mut Option<MessageStream>,
    owner: Option<&str>,
) -> String {
    match stream {
        Some(s) => loop {
            match s.next().await {
                Some(Ok(msg)) => {
                    if let Ok((_, _, new)) = msg.body().deserialize::<(String, String, String)>() {
                        if Some(new.as_str()) == owner {
                            continue;
                        }
                        return if new.is_empty() {
                            "released".to_owned()
                        } else {
                            format!("new owner {new}")
                        };
                    }
                }
                Some(Err(_)) => {}
                None => std::future::pending::<()>().await,
            }
        },
        None => std::future::pending().await,
    }
}

/// One established connection with its signal streams.
pub(super) struct Session {
    pub(super) conn: Connection,
    pub(super) signals: MessageStream,
    pub(super) owner_changes: Option<MessageStream>,
    /// The unique bus name of the manager we talk to (bus connections).
    pub(super) owner: Option<String>,
    /// The manager's major version (`Version`, e.g. 252 of "252.38-1~deb12u1").
    pub(super) version: u32,
}

impl Session {
    pub(super) async fn open(opts: &Options) -> zbus::Result<Self> {
        let builder = match &opts.target {
            Target::System => zbus::connection::Builder::system(),
            Target::User => zbus::connection::Builder::session(),
            Target::Bus(addr) => zbus::connection::Builder::address(addr.as_str()),
            Target::Private(addr) => crate::systemd::private::connect(addr).await?,
        };
        // Signals are consumed by one task without blocking, but a burst
        // (1000 units changing at once) must not overflow the queue.
        let conn = builder
            .max_queued(std::num::NonZeroUsize::new(65536).expect("non-zero"))
            .build()
            .await?;
        // Subscribe to signals before anything can happen that we must see.
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(DEST)
            .build()?;
        let signals = MessageStream::for_match_rule(
            rule,
            &conn,
            Some(std::num::NonZeroUsize::new(65536).expect("non-zero")),
        )
        .await?;
        let owner_changes = if conn.is_bus() {
            let rule = MatchRule::builder()
                .msg_type(MessageType::Signal)
                .sender("org.freedesktop.DBus")
                .interface("org.freedesktop.DBus")
                .member("NameOwnerChanged")
                .add_arg(DEST)
                .build()?;
            Some(MessageStream::for_match_rule(rule, &conn, None).await?)
        } else {
            None
        };
        // The first call carries arguments: on a fresh private-socket
        // connection an argument-less first call sometimes gets no reply.
        let reply = conn
            .call_method(
                Some(DEST),
                MANAGER_PATH,
                Some(PROPS_IFACE),
                "Get",
                &(MANAGER_IFACE, "Version"),
            )
            .await?;
        let version = reply
            .body()
            .deserialize::<OwnedVariant>()
            .ok()
            .and_then(|v| String::try_from(v).ok())
            .map_or(0, |v| major_version(&v));
        // Without a subscriber systemd sends no unit signals on the bus.
        conn.call_method(
            Some(DEST),
            MANAGER_PATH,
            Some(MANAGER_IFACE),
            "Subscribe",
            &(),
        )
        .await?;
        let owner = if conn.is_bus() {
            let reply = conn
                .call_method(
                    Some("org.freedesktop.DBus"),
                    "/org/freedesktop/DBus",
                    Some("org.freedesktop.DBus"),
                    "GetNameOwner",
                    &(DEST,),
                )
                .await?;
            Some(reply.body().deserialize::<String>()?)
        } else {
            None
        };
        Ok(Self {
            conn,
            signals,
            owner_changes,
            owner,
            version,
        })
    }
}

/// The major version of systemd's `Version` ("252.38-1~deb12u1", "v256").
pub(super) fn major_version(v: &str) -> u32 {
    v.trim_start_matches('v')
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn major_versions() {
        for (v, major) in [
            ("252.38-1~deb12u1", 252),
            ("v256", 256),
            ("257.1", 257),
            ("", 0),
        ] {
            assert_eq!(super::major_version(v), major, "{v}");
        }
    }
}
