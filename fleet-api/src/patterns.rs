//! The server's naming and grammar rules as JSON Schema patterns (ECMA-262, whole value), for
//! the OpenAPI document: a client checking a request against the document is refused by the
//! server only for what a schema cannot say (cross-field rules, the fleet's state).
//!
//! Each names the server check it mirrors; a pattern may be stricter than its check, never
//! looser.

/// A group name (`groups::check_group_name`).
pub const GROUP_NAME: &str = "^[a-z0-9_-]{1,63}$";
/// A token name (`auth::check_name`).
pub const TOKEN_NAME: &str = "^[a-z0-9_-]{1,64}$";
/// A variable name (`variables::check_name`): a POSIX environment name, not `FLEET_...`.
pub const VARIABLE_NAME: &str = "^(?!FLEET_)[A-Za-z_][A-Za-z0-9_]{0,255}$";
/// A secret name (`fleet_proto::release::is_object_name`).
pub const SECRET_NAME: &str = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$";
/// A label key (`groups::check_label_key`).
pub const LABEL_KEY: &str = "^[A-Za-z0-9_./-]{1,63}$";
/// A label value (`groups::check_label_value`): no comma, no control character.
pub const LABEL_VALUE: &str = "^[^,\\u0000-\\u001f\\u007f-\\u009f]{0,255}$";
/// A label selector (`groups::Selector::parse`): `k=v,k!=v,k,!k`; empty selects every device.
pub const SELECTOR: &str = "^ *$|^ *(!?[A-Za-z0-9_./-]{1,63}|[A-Za-z0-9_./-]{1,63} *!?= *[^,!=\\u0000-\\u001f\\u007f-\\u009f]{0,255}) *(, *(!?[A-Za-z0-9_./-]{1,63}|[A-Za-z0-9_./-]{1,63} *!?= *[^,!=\\u0000-\\u001f\\u007f-\\u009f]{0,255}) *)*$";
/// A group's selector (`ops::groups`): as [`SELECTOR`], but never empty (a group of every
/// device is refused).
pub const GROUP_SELECTOR: &str = "^ *(!?[A-Za-z0-9_./-]{1,63}|[A-Za-z0-9_./-]{1,63} *!?= *[^,!=\\u0000-\\u001f\\u007f-\\u009f]{0,255}) *(, *(!?[A-Za-z0-9_./-]{1,63}|[A-Za-z0-9_./-]{1,63} *!?= *[^,!=\\u0000-\\u001f\\u007f-\\u009f]{0,255}) *)*$";
/// A duration (`units::parse_duration`): `90`, `90s`, `10m`, `1h30m`, `500ms`, `2d`.
pub const DURATION: &str = "^[0-9]{1,12}$|^([0-9]{1,6}(ms|s|m|h|d)){1,5}$";
/// A device's enrollment public key: an uncompressed P-256 point in hex.
pub const P256_POINT_HEX: &str = "^04[0-9a-fA-F]{128}$";
/// An ASN.1 DER ECDSA signature in hex.
pub const DER_SIGNATURE_HEX: &str = "^30[0-9a-fA-F]{12,144}$";
