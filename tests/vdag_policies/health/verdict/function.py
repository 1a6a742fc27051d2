"""Health checker: which nodes' blocks are down."""


class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        pass

    def eval(self, parameters, input_data, context):
        data = input_data["health_check_data"]
        return {"down": sorted(label for label, d in data.items() if not d["up"])}
