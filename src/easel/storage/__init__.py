"""Where files live: the object store port (:mod:`.objects`), whether it takes writes now
(:mod:`.check`) and signed output URLs (:mod:`.signing`)."""
