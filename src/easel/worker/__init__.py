"""The worker: claim a task, resolve its inputs, run its backend chain, store the output,
settle (:mod:`.runner`); attempts and their time limits (:mod:`.attempts`), its identity and
registration (:mod:`.identity`), input images (:mod:`.inputs`)."""
