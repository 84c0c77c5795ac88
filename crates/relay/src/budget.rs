//! A byte budget for message data held in memory between the client's first DATA byte
//! and the spool commit. Each session buffers its message (up to `max_message_size`),
//! so without a budget 500 clients × 35 MB could ask for 17 GB; with it, a message that
//! does not fit is answered with a temporary failure (the client keeps it and retries)
//! instead of the relay running out of memory and losing what it holds.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes per permit: coarse enough that a message takes few permits.
const UNIT: usize = 64 * 1024;

/// The relay-wide budget (`[relay] max_data_memory`).
#[derive(Debug)]
pub struct DataBudget {
    units: Arc<Semaphore>,
}

impl DataBudget {
    /// A budget of `bytes` (at least one unit).
    pub fn new(bytes: usize) -> DataBudget {
        DataBudget {
            units: Arc::new(Semaphore::new((bytes / UNIT).max(1))),
        }
    }

    /// An empty reservation that grows with a message.
    pub fn reserve(&self) -> Reservation {
        Reservation {
            units: self.units.clone(),
            held: Vec::new(),
            held_units: 0,
        }
    }
}

/// Part of the budget held by one message; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    units: Arc<Semaphore>,
    held: Vec<OwnedSemaphorePermit>,
    held_units: usize,
}

impl Reservation {
    /// Hold enough of the budget for `bytes`; false (holding what it had) when the
    /// budget cannot cover them now.
    pub fn grow_to(&mut self, bytes: usize) -> bool {
        let need = bytes.div_ceil(UNIT);
        if need <= self.held_units {
            return true;
        }
        let more = need - self.held_units;
        let Ok(more_u32) = u32::try_from(more) else {
            return false;
        };
        match self.units.clone().try_acquire_many_owned(more_u32) {
            Ok(permit) => {
                self.held.push(permit);
                self.held_units = need;
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_that_does_not_fit_is_refused_and_the_budget_comes_back() {
        let budget = DataBudget::new(4 * UNIT);
        let mut a = budget.reserve();
        assert!(a.grow_to(1));
        assert!(a.grow_to(3 * UNIT));
        let mut b = budget.reserve();
        assert!(!b.grow_to(2 * UNIT), "only one unit is left");
        assert!(b.grow_to(UNIT));
        drop(a);
        assert!(b.grow_to(4 * UNIT), "a's units came back");
        assert!(!b.grow_to(4 * UNIT + 1));
    }
}
