//! Readers that translate foreign MTA logs (Postfix, Exim, PowerMTA, KumoMTA) and
//! mxpace's own JSON Lines into [`crate::Event`]s.
