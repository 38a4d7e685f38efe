//! Which replicated state machine a group runs.
//!
//! A node runs one of two layouts. `Records` gives every group the plain
//! record log of [`crate::state_machine`] (what the simulator's workload
//! drives). `Broker` makes group 0 the metadata group and every other group
//! a Kafka partition, except the groups of the offsets topic's partitions
//! (numbered from [`crate::offsets::OFFSETS_GROUP_BASE`]), which hold
//! consumer groups' offsets and metadata. Snapshots encode the machine alone; the layout and the
//! group id say how to decode them.

use runnel_io::GroupId;

use crate::metadata::{MetadataState, METADATA_GROUP};
use crate::offsets::{is_offsets_group, OffsetsState};
use crate::partition::PartitionLog;
use crate::state_machine::StateMachine;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachineLayout {
    Records,
    Broker,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Machine {
    Records(StateMachine),
    Partition(PartitionLog),
    Metadata(MetadataState),
    Offsets(OffsetsState),
}

impl Machine {
    pub fn new(layout: MachineLayout, group: GroupId) -> Machine {
        match layout {
            MachineLayout::Records => Machine::Records(StateMachine::default()),
            MachineLayout::Broker if group == METADATA_GROUP => {
                Machine::Metadata(MetadataState::default())
            }
            MachineLayout::Broker if is_offsets_group(group) => {
                Machine::Offsets(OffsetsState::default())
            }
            MachineLayout::Broker => Machine::Partition(PartitionLog::default()),
        }
    }

    /// Decodes a snapshot's data; empty data is the initial state.
    pub fn decode(layout: MachineLayout, group: GroupId, data: &[u8]) -> Machine {
        if data.is_empty() {
            return Machine::new(layout, group);
        }
        match Machine::new(layout, group) {
            Machine::Records(_) => Machine::Records(StateMachine::decode(data)),
            Machine::Partition(_) => Machine::Partition(PartitionLog::decode(data)),
            Machine::Metadata(_) => Machine::Metadata(MetadataState::decode(data)),
            Machine::Offsets(_) => Machine::Offsets(OffsetsState::decode(data)),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Machine::Records(machine) => machine.encode(),
            Machine::Partition(log) => log.encode(),
            Machine::Metadata(state) => state.encode(),
            Machine::Offsets(state) => state.encode(),
        }
    }

    pub fn records(&self) -> Option<&StateMachine> {
        match self {
            Machine::Records(machine) => Some(machine),
            _ => None,
        }
    }

    pub fn partition(&self) -> Option<&PartitionLog> {
        match self {
            Machine::Partition(log) => Some(log),
            _ => None,
        }
    }

    pub fn metadata(&self) -> Option<&MetadataState> {
        match self {
            Machine::Metadata(state) => Some(state),
            _ => None,
        }
    }

    pub fn offsets(&self) -> Option<&OffsetsState> {
        match self {
            Machine::Offsets(state) => Some(state),
            _ => None,
        }
    }
}
