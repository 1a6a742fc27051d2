"""A Block whose module prints when it is imported, as model libraries do ("loading
weights... done"), and while it loads and works: none of it may reach a stdout that
a program reads (``block up --json``'s first line is its JSON)."""

from aios_fast.block import Block

print("loading weights... done")


class LoudBlock(Block):
    inline = True

    def __init__(self, init_data=None, parameters=None):
        print("LoudBlock: warming up")
        super().__init__(init_data, parameters)

    def on_data(self, entry):
        print("LoudBlock: a task")
        return entry.data
