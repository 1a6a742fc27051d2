"""A small importable policy for the loader tests: sticky by session, defaults overridable,
context used as a persistent pick counter, management() answering actions."""


class AIOSv1PolicyRule:
    DEFAULT_PARAMETERS = {"prefer": None, "tag": "default"}
    DEFAULT_SETTINGS = {"mode_name": "sticky"}

    def __init__(self, rule_id, settings, parameters):
        self.rule_id = rule_id
        self.settings = settings
        self.parameters = parameters
        self.get_metrics = settings["get_metrics"]

    def eval(self, parameters, input_data, context):
        context["calls"] = context.get("calls", 0) + 1
        self.get_metrics()
        prefer = parameters.get("prefer")
        if prefer in input_data["instances"]:
            return {"instance_id": prefer}
        instances = input_data["instances"]
        return {"instance_id": instances[len(input_data["packet"].session_id) % len(instances)]}

    def management(self, action, data):
        if action == "get_params":
            return {"success": True, "data": dict(self.parameters)}
        return {"success": False, "message": f"unknown action {action}"}


class Broken:
    def __init__(self, rule_id, settings, parameters):
        raise RuntimeError("cannot start")

    def eval(self, parameters, input_data, context):
        return {}


class Misbehaving:
    """Returns whatever parameters['answer'] says, or raises when it is 'raise'."""

    def __init__(self, rule_id, settings, parameters):
        pass

    def eval(self, parameters, input_data, context):
        answer = parameters["answer"]
        if answer == "raise":
            raise ValueError("policy bug")
        return answer


class FailingManagement(AIOSv1PolicyRule):
    """Picks like the sticky policy; every management action raises."""

    def management(self, action, data):
        raise RuntimeError(f"cannot do {action}")
