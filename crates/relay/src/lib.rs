//! The relay: ingress, durable spool, scheduler, egress SMTP client, DSN
