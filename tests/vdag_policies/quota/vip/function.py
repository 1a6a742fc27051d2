"""Quota checker: only sessions starting with 'vip' get in; 'boom' makes it raise."""


class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        pass

    def eval(self, parameters, input_data, context):
        if input_data["session_id"] == "boom":
            raise RuntimeError("no quota data")
        if input_data["session_id"].startswith("vip"):
            return True
        return {"allowed": False, "message": f"{input_data['session_id']} is not a vip"}
