"""A stabilityChecker policy in the seeds' shape that records what it is given (the
health checker runs it in the test's own process)."""

CALLS: list[dict] = []


class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        self.settings = settings
        self.block_data = settings["block_data"]
        self.counter = {}

    def eval(self, parameters, input_data, context):
        for instance, healthy in input_data["health_check_data"].items():
            if not healthy:
                self.counter[instance] = self.counter.get(instance, 0) + 1
        CALLS.append({"input": input_data, "block_id": self.block_data.get("id")})
        if parameters.get("explode"):
            raise RuntimeError("policy bug")
        return {}

    def management(self, action, data):
        if action == "counters":
            return dict(self.counter)
        raise ValueError(f"unknown action {action}")
