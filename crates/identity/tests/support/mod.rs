pub mod nsd;
