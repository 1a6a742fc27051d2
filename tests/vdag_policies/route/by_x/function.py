"""Post-processing: send the task to next node 'big' when x > parameters.threshold, else
'small' (conditional routing)."""

import json


class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        self.settings = settings

    def eval(self, parameters, input_data, context):
        x = json.loads(input_data["packet"].data)["x"]
        return {"next": ["big" if x > parameters.get("threshold", 10) else "small"]}
