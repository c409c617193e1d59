//! Hot-plug: device arrival and removal under `/dev`.
