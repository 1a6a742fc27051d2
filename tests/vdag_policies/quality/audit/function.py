"""Quality checker: appends each sample (input and output) to parameters['path'] as a
JSON line (an external audit store in real life)."""

import json


class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        pass

    def eval(self, parameters, input_data, context):
        with open(parameters["path"], "a") as f:
            f.write(json.dumps(input_data) + "\n")
        return {"ok": json.loads(input_data["output"]["data"])["x"] >= 0}
