-- What an idempotency key was used for: the sha256 of the create's canonical request, so that
-- the key sent again with another request is refused. Null for runs made before: those keys
-- return their run whatever the request, as they did.

ALTER TABLE runs ADD COLUMN idempotency_request TEXT;
