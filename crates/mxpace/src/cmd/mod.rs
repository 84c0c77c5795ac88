//! One module per face of the binary. Each owns its flags and entry points.

pub mod analyze;
pub mod check;
pub mod demo;
pub mod explain;
pub mod pacing;
pub mod relay;
pub mod sim;
