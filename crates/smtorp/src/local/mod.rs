//! Local submission: how messages from programs on this machine (`smtorp sendmail`) reach
//! the queue.

pub mod maildrop;
