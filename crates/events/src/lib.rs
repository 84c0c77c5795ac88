//! The one event schema (see `docs/events.md`): the relay writes it, the readers
//! translate foreign MTA logs into it, the analyzer reads only it.

mod schema;
mod writer;

pub use schema::{Event, EventType, Outcome};
pub use writer::EventWriter;

pub mod readers;
