pub mod https;
pub mod nsd;
