//! The bridge from SMTP sessions to the intake: one [`Handler`] for every listener. A
//! message's text streams into its spool file as the session hands it out; the session's
//! envelope becomes the message's; AUTH (submission only) goes to the [`Authenticator`].

use std::net::IpAddr;
use std::sync::Arc;

use smtorp_queue::Origin;
use smtorp_smtp::{Credentials, Handler, Reply, Transaction};
use tracing::debug;

use super::auth::Authenticator;
use crate::config::SenderAuth;
use crate::intake::{Arrival, Incoming, Intake};

/// What a listener's sessions share.
pub(crate) struct Shared {
    /// The one way into the queue.
    pub(crate) intake: Arc<Intake>,
    /// Recorded as the messages' origin (and it decides their header hygiene).
    pub(crate) origin: Origin,
    /// Password checks (the submission port); `None` refuses AUTH.
    pub(crate) auth: Option<Arc<Authenticator>>,
}

/// One session's handler: the shared parts and the client's address.
pub(crate) struct SessionHandler {
    shared: Arc<Shared>,
    peer: Option<IpAddr>,
}

impl SessionHandler {
    /// The handler of a session from `peer` (its address when known; onion streams have
    /// none).
    pub(crate) fn new(shared: Arc<Shared>, peer: Option<IpAddr>) -> SessionHandler {
        SessionHandler { shared, peer }
    }
}

impl Handler for SessionHandler {
    type Message = Incoming;

    async fn begin(&self, tx: &Transaction) -> Result<Incoming, Reply> {
        let arrival = Arrival {
            sender: tx.sender.clone(),
            recipients: tx.recipients.clone(),
            // Our Received names a client only on the onion side, by its EHLO name.
            helo: (self.shared.origin == Origin::Smtp).then(|| tx.helo.clone()),
            origin: self.shared.origin,
            // Onion-side mail is marked with its XONIONAUTH result unless that is off.
            onion_auth: (self.shared.origin == Origin::Smtp
                && self.shared.intake.senders().mode() != SenderAuth::Off)
                .then(|| tx.onion_auth.clone()),
        };
        self.shared
            .intake
            .begin(arrival)
            .await
            .map_err(|e| e.reply())
    }

    async fn write(&self, message: &mut Incoming, text: &[u8]) -> Result<(), Reply> {
        self.shared
            .intake
            .write(message, text)
            .await
            .map_err(|e| e.reply())
    }

    async fn enqueue(&self, tx: Transaction, message: Incoming) -> Result<String, Reply> {
        match self.shared.intake.commit(message, None).await {
            Ok(Some(id)) => {
                debug!(queue_id = %id, user = ?tx.auth_user, "accepted");
                Ok(id.to_string())
            }
            Ok(None) => Err(Reply::new(451, [4, 3, 0], "Queue temporarily unavailable")),
            Err(e) => Err(e.reply()),
        }
    }

    async fn authenticate(&self, credentials: Credentials) -> Result<String, Reply> {
        match &self.shared.auth {
            Some(auth) => auth.check(self.peer, credentials).await,
            None => Err(Reply::new(
                535,
                [5, 7, 8],
                "Authentication credentials invalid",
            )),
        }
    }
}
