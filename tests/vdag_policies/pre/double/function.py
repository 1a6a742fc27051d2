"""Pre-processing: doubles x and records which node ran it (settings['node_label'])."""

import json


class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        self.node = settings["node_label"]

    def eval(self, parameters, input_data, context):
        packet = input_data["packet"]
        data = json.loads(packet.data)
        data["x"] *= 2
        data.setdefault("pre", []).append(self.node)
        return packet.replace(data=json.dumps(data))
