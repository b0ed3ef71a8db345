//! The connections open in this process, for the admin API: who, from where, since when,
//! and a way to close one. A front-end enters each connection once it is admitted and
//! leaves by dropping its [`SessionEntry`]; closing asks the front-end to end it.

use crate::protocol::Protocol;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;

/// The open connections, by session id.
#[derive(Debug, Default)]
pub struct SessionTable {
    open: Mutex<HashMap<String, Arc<OpenSession>>>,
}

/// One open connection.
#[derive(Debug)]
pub struct OpenSession {
    /// As the audit trail names it.
    pub id: String,
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// When it was admitted.
    pub started_at: SystemTime,
    /// ftp until a login over TLS makes it ftps.
    protocol: Mutex<Protocol>,
    /// Who logged in, once someone did.
    username: Mutex<Option<String>>,
    /// Cancelled when the operator closes the connection.
    close: CancellationToken,
}

/// A connection's place in the table; dropping it removes the connection.
#[derive(Debug)]
pub struct SessionEntry {
    table: Arc<SessionTable>,
    /// The connection.
    pub session: Arc<OpenSession>,
}

/// An open connection as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    /// Session id (`DELETE /api/v1/sessions/{id}` closes it).
    pub id: String,
    /// ftp | ftps | sftp
    pub protocol: Protocol,
    /// Who logged in; `null` before a login.
    pub username: Option<String>,
    /// The client's address and port.
    pub remote_addr: SocketAddr,
    /// When the connection was admitted (RFC 3339).
    pub started_at: String,
}

impl Drop for SessionEntry {
    fn drop(&mut self) {
        self.table.open.lock().remove(&self.session.id);
    }
}

impl SessionTable {
    /// Enters a connection admitted now.
    pub fn enter(
        self: &Arc<Self>,
        id: &str,
        protocol: Protocol,
        remote_addr: SocketAddr,
    ) -> SessionEntry {
        let session = Arc::new(OpenSession {
            id: id.to_string(),
            remote_addr,
            started_at: SystemTime::now(),
            protocol: Mutex::new(protocol),
            username: Mutex::new(None),
            close: CancellationToken::new(),
        });
        self.open.lock().insert(id.to_string(), session.clone());
        SessionEntry {
            table: self.clone(),
            session,
        }
    }

    /// Every open connection, oldest first.
    pub fn list(&self) -> Vec<SessionView> {
        let open: Vec<Arc<OpenSession>> = self.open.lock().values().cloned().collect();
        let mut views: Vec<(SystemTime, SessionView)> =
            open.iter().map(|s| (s.started_at, s.view())).collect();
        views.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        views.into_iter().map(|(_, v)| v).collect()
    }

    /// How many connections are open.
    pub fn count(&self) -> usize {
        self.open.lock().len()
    }

    /// Asks the front-end to close connection `id`; false when no such connection is open.
    pub fn close(&self, id: &str) -> bool {
        match self.open.lock().get(id) {
            Some(session) => {
                session.close.cancel();
                true
            }
            None => false,
        }
    }
}

impl OpenSession {
    /// Records a successful login.
    pub fn logged_in(&self, username: &str, protocol: Protocol) {
        *self.username.lock() = Some(username.to_string());
        *self.protocol.lock() = protocol;
    }

    /// Resolves when the operator closes this connection.
    pub async fn closed(&self) {
        self.close.cancelled().await;
    }

    fn view(&self) -> SessionView {
        SessionView {
            id: self.id.clone(),
            protocol: *self.protocol.lock(),
            username: self.username.lock().clone(),
            remote_addr: self.remote_addr,
            started_at: humantime::format_rfc3339_millis(self.started_at).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_is_listed_until_it_leaves_and_can_be_closed() {
        let table = Arc::new(SessionTable::default());
        let addr = "127.0.0.1:4000".parse().expect("address");
        let entry = table.enter("s1", Protocol::Ftp, addr);
        let listed = table.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].username, None, "not logged in yet");
        entry.session.logged_in("alice", Protocol::Ftps);
        let listed = table.list();
        assert_eq!(listed[0].username.as_deref(), Some("alice"));
        assert_eq!(listed[0].protocol, Protocol::Ftps);

        assert!(!table.close("nope"));
        assert!(table.close("s1"));
        tokio::time::timeout(std::time::Duration::from_secs(1), entry.session.closed())
            .await
            .expect("the front-end hears the close");
        drop(entry);
        assert_eq!(table.count(), 0);
        assert!(!table.close("s1"), "gone once it left");
    }
}
