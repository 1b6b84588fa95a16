//! The one table from internal errors to AMQP error conditions.

use ferrobus_codec::types::definitions::{AmqpError, Error, ErrorCondition};
use ferrobus_codec::types::primitives::Symbol;
use ferrobus_store::StoreError;

/// Service Bus: no message with that sequence number.
pub const MESSAGE_NOT_FOUND: &str = "com.microsoft:message-not-found";

/// Service Bus: the lock on a message was lost or has expired.
pub const MESSAGE_LOCK_LOST: &str = "com.microsoft:message-lock-lost";

/// Service Bus: the entity (a rule) already exists.
pub const ENTITY_EXISTS: &str = "com.microsoft:entity-already-exists";

/// Service Bus: the session's lock was lost or has expired.
pub const SESSION_LOCK_LOST: &str = "com.microsoft:session-lock-lost";

/// Service Bus: the session is locked by another receiver.
pub const SESSION_CANNOT_BE_LOCKED: &str = "com.microsoft:session-cannot-be-locked";

/// Service Bus: the operation did not complete in time (no session became available).
pub const TIMEOUT: &str = "com.microsoft:timeout";

/// The AMQP error for a store error.
pub fn store_error(e: &StoreError) -> Error {
    let condition: ErrorCondition = match e {
        StoreError::LockLost => ErrorCondition::Custom(Symbol::from(MESSAGE_LOCK_LOST)),
        StoreError::NotFound(_) => ErrorCondition::Custom(Symbol::from(MESSAGE_NOT_FOUND)),
        StoreError::Full(_) => AmqpError::ResourceLimitExceeded.into(),
        StoreError::Invalid(_) => AmqpError::InvalidField.into(),
        StoreError::EntityExists(_) => ErrorCondition::Custom(Symbol::from(ENTITY_EXISTS)),
        StoreError::EntityNotFound(_) => AmqpError::NotFound.into(),
        StoreError::NotAllowed(_) => AmqpError::NotAllowed.into(),
        StoreError::SessionLockLost(_) => ErrorCondition::Custom(Symbol::from(SESSION_LOCK_LOST)),
        StoreError::SessionCannotBeLocked(_) => {
            ErrorCondition::Custom(Symbol::from(SESSION_CANNOT_BE_LOCKED))
        }
        StoreError::Storage(_) | StoreError::Corrupt(_) => AmqpError::InternalError.into(),
    };
    ferrobus_codec::error(condition, e.to_string())
}

/// The symbol text of a condition.
pub fn condition(c: &ErrorCondition) -> String {
    match ferrobus_codec::serde_amqp::to_vec(c)
        .ok()
        .and_then(|b| ferrobus_codec::serde_amqp::from_slice::<Symbol>(&b).ok())
    {
        Some(s) => s.as_str().to_string(),
        None => format!("{c:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_their_conditions() {
        assert_eq!(
            condition(&store_error(&StoreError::LockLost).condition),
            MESSAGE_LOCK_LOST
        );
        assert_eq!(
            condition(&store_error(&StoreError::Full("x".into())).condition),
            "amqp:resource-limit-exceeded"
        );
        assert_eq!(
            condition(&store_error(&StoreError::Storage("x".into())).condition),
            "amqp:internal-error"
        );
        assert_eq!(
            condition(&store_error(&StoreError::SessionLockLost("x".into())).condition),
            SESSION_LOCK_LOST
        );
        assert_eq!(
            condition(&store_error(&StoreError::SessionCannotBeLocked("x".into())).condition),
            SESSION_CANNOT_BE_LOCKED
        );
        assert_eq!(
            condition(&store_error(&StoreError::NotAllowed("x".into())).condition),
            "amqp:not-allowed"
        );
    }
}
