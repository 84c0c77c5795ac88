//! Receiver simulator: a pure receiver model and the SMTP server around it
