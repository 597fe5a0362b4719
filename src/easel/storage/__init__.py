"""Where files live: the object store port (:mod:`.objects`) and signed output URLs
(:mod:`.signing`)."""
