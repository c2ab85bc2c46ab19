//! The on-disk key layout of the queue trees (see README.md, "On-disk layout").

use crate::QueueId;

/// Tree: id (8 bytes big-endian) -> serde_json of the envelope.
pub(crate) const ENVELOPES: &str = "envelopes";
/// Tree of older versions: id (8 bytes big-endian) -> raw message body. Bodies now live in
/// spool files; [`crate::Queue::open`] moves any left here into them.
pub(crate) const BODIES: &str = "bodies";
/// Tree: a keyed hash of a peer (32 bytes, made by the caller) -> last seen, Unix seconds
/// (8 bytes BE): peers known to authenticate their mail (docs/sender-auth.md). The queue
/// stores only what it is given: no address.
pub(crate) const PEERS: &str = "peers";
/// The folder (inside the queue folder) of the spool files, one per message, named by id.
pub(crate) const SPOOL_DIR: &str = "spool";
/// The folder (inside the queue folder) of emptied spool files kept for reuse; not durable,
/// emptied at open.
pub(crate) const POOL_DIR: &str = "spool.free";
/// Tree: due secs (8 bytes BE) || id (8 bytes BE) -> empty value.
pub(crate) const DUE: &str = "due";
/// Tree: intake tokens (e.g. a maildrop file name) -> id: an entry point that must not
/// enqueue the same thing twice records its token in the same transaction as the message.
pub(crate) const TOKENS: &str = "tokens";
/// Tree: records that could not be decoded at open, moved aside by recovery
/// (`b"e"` || original envelope key -> envelope bytes, `b"b"` || id -> body).
pub(crate) const QUARANTINE: &str = "quarantine";

/// The key of `id` in the envelopes and bodies trees.
pub(crate) fn id_key(id: QueueId) -> [u8; 8] {
    id.0.to_be_bytes()
}

/// Decodes an envelopes/bodies key; `None` when it is not 8 bytes.
pub(crate) fn parse_id_key(key: &[u8]) -> Option<QueueId> {
    let bytes: [u8; 8] = key.try_into().ok()?;
    Some(QueueId(u64::from_be_bytes(bytes)))
}

/// The key of `id` due at `due_secs` in the due tree.
pub(crate) fn due_key(due_secs: u64, id: QueueId) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&due_secs.to_be_bytes());
    key[8..].copy_from_slice(&id.0.to_be_bytes());
    key
}

/// Decodes a due-tree key into (due secs, id); `None` when it is not 16 bytes.
pub(crate) fn parse_due_key(key: &[u8]) -> Option<(u64, QueueId)> {
    let key: &[u8; 16] = key.try_into().ok()?;
    let (secs, id) = key.split_at(8);
    let secs: [u8; 8] = secs.try_into().ok()?;
    let id: [u8; 8] = id.try_into().ok()?;
    Some((u64::from_be_bytes(secs), QueueId(u64::from_be_bytes(id))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_keys_sort_by_time_then_id() {
        let a = due_key(5, QueueId(u64::MAX));
        let b = due_key(6, QueueId(1));
        let c = due_key(6, QueueId(2));
        assert!(a < b && b < c);
        assert_eq!(parse_due_key(&c), Some((6, QueueId(2))));
        assert_eq!(parse_due_key(&c[..15]), None);
        assert_eq!(parse_id_key(&id_key(QueueId(77))), Some(QueueId(77)));
        assert_eq!(parse_id_key(b"short"), None);
    }
}
