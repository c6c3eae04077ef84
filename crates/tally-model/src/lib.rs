//! Tally's domain model: click IDs, events, money, the program, the record envelope, and
//! the UTC calendar.
//!
//! Architecture invariant: this crate does no I/O. It is shared by the edge, the log, the
//! attribution worker and the CLI, and everything in it is deterministic given its inputs
//! (the one exception, [`ClickId::mint`], draws randomness on purpose).

pub mod click_id;
pub mod decision;
pub mod delivery;
pub mod event;
pub mod managed;
pub mod money;
pub mod program;
pub mod record;
pub mod routing;
pub mod shards;
pub mod time;

pub use click_id::{ClickId, ClickIdError};
pub use decision::Decision;
pub use event::{
    click_flags, legacy_visitor_key, visitor_key, Click, ClickView, Conversion, ConversionSource, ConversionStatus,
    Customer, CustomerKey, Event, EventKind, ProgramChange, Signals,
};
pub use managed::{Edit, Managed};
pub use money::{format_minor, parse_minor, parse_reported_minor, Currency, MoneyError};
pub use program::{Program, ProgramError};
pub use record::{
    decode, decode_personal, decode_view, encode, encode_click_into, encode_into, encode_salted, EventView, Personal,
    RecordError,
};
