//! Online update of a library (`pvmctl lib update`), monitor side.
use pvm_abi::{errno, DlInfo};

use crate::hypercall::UpdateStep;
use crate::monitor::Monitor;

impl Monitor {
    /// [`pvm_abi::Hypercall::DlUpdate`].
    pub(crate) fn update_step(&mut self, _step: UpdateStep) -> Result<Option<DlInfo>, i64> {
        Err(-errno::EINVAL)
    }
}
