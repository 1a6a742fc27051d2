"""vDAG documents: validation (one line per problem, naming the node), the seeds' filter
conditions, compiling into a plan (assignment, sub-vDAGs), and ``aios-fast vdag check``.
The filter expectations are written from the seeds' filter specification (operators
==, IN, >, >=, <, <=, LIKE with '*'; AND/OR nesting; dotted paths), not from our code."""

from __future__ import annotations

import json

import pytest

from aios_fast.vdag import (
    Plan,
    VDagError,
    compile_condition,
    compile_vdag,
    parse,
    problems,
)
from aios_fast.vdag.filters import FilterError


def node(label, block=None, **extra):
    n = {"nodeLabel": label, "nodeType": "block", **extra}
    if block is not None:
        n["manualBlockId"] = block
    return n


def vdag(nodes, connections, inputs=("a",), output="c", name="pipe", version="1.0"):
    return {
        "vdagName": name,
        "vdagVersion": {"version": version, "releaseTag": "stable"},
        "nodes": nodes,
        "graph": {
            "input": [{"nodeLabel": x, "inputNames": ["in"]} for x in inputs],
            "output": [{"nodeLabel": output, "outputNames": ["out"]}],
            "connections": [
                {"nodeLabel": dst, "inputs": [{"nodeLabel": s} for s in srcs]}
                for dst, srcs in connections.items()
            ],
        },
    }


def connect(d, dst, *srcs):
    d["graph"]["connections"].append({"nodeLabel": dst,
                                      "inputs": [{"nodeLabel": s} for s in srcs]})  # fmt: skip


def chain():
    return vdag([node("a", "b1"), node("b", "b2"), node("c", "b3")], {"b": ["a"], "c": ["b"]})


BLOCKS = [
    {"id": "b1", "cluster": {"id": "c1", "regionId": "eu"}, "tags": ["vision"], "score": 91},
    {"id": "b2", "cluster": {"id": "c2", "regionId": "us"}, "tags": ["nlp"], "score": 80},
    {"id": "b3", "cluster": {"id": "c1", "regionId": "eu"}, "tags": ["ml", "nlp"], "score": 95,
     "initSettings": {"ports": {"grpc": 24555}}},
]  # fmt: skip


def test_a_chain_is_valid_and_compiles_to_a_plan():
    doc = parse(chain())
    assert problems(doc) == []
    plan = compile_vdag(doc, BLOCKS, endpoints={"b1": "127.0.0.1:24001"})
    assert plan.vdag_uri == "pipe:1.0-stable"
    assert plan.input == ["a"] and plan.output == "c"
    assert [plan.nodes[x].next for x in "abc"] == [["b"], ["c"], []]
    assert [plan.nodes[x].inputs for x in "abc"] == [[], ["a"], ["b"]]
    # endpoints: given, else the block document's own gRPC port, else the seeds' 50051
    assert [plan.nodes[x].endpoint for x in "abc"] == [
        "127.0.0.1:24001", "127.0.0.1:50051", "127.0.0.1:24555"]  # fmt: skip
    # recorded in the document as the original did
    assert doc.status == "assigned"
    assert doc.assignment_info == {"a": "b1", "b": "b2", "c": "b3"}
    data = doc.compiled_graph_data
    assert data["head"] == "b1" and data["tail"] == ["b3"]
    assert data["t2_graph"] == {"b1": ["b2"], "b2": ["b3"], "b3": []}
    assert data["rev_mapping"] == {"b1": "a", "b2": "b", "b3": "c"}
    assert Plan.from_dict(json.loads(json.dumps(data["plan"]))) == plan


def test_the_original_documentation_spellings_are_read():
    raw = chain()
    raw["graph"]["inputs"] = raw["graph"].pop("input")
    raw["graph"]["outputs"] = raw["graph"].pop("output")
    raw["vdagVersion"] = {"version": "2", "release-tag": "beta"}
    raw["nodes"][0]["nodeType"] = ""  # the original: "" is a block
    doc = parse(raw)
    assert problems(doc) == [] and doc.uri == "pipe:2-beta"


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["nodes"].append(node("b", "b9")),
         ["node 'b': duplicate nodeLabel (nodes[1] and nodes[3])"]),
        (lambda d: connect(d, "z", "c"),
         ["node 'z': named in graph.connections but not defined in nodes"]),
        (lambda d: d["graph"]["connections"][0]["inputs"].append({"nodeLabel": "q"}),
         ["node 'q': named in the inputs of 'b' but not defined in nodes"]),
        (lambda d: connect(d, "a", "c"),
         ["node 'a': a graph input that also has inputs in connections",
          "node 'a': in a cycle a -> b -> c -> a"]),
        (lambda d: d["graph"]["connections"][0]["inputs"].append({"nodeLabel": "c"}),
         ["node 'b': in a cycle b -> c -> b"]),
        (lambda d: d["nodes"].append(node("lonely", "b1")),
         ["node 'lonely': not reachable from the graph's input"]),
        (lambda d: (d["nodes"].append(node("dead", "b1")), connect(d, "dead", "a")),
         ["node 'dead': does not reach the graph's output"]),
        (lambda d: d["nodes"][1].pop("manualBlockId"),
         ["node 'b': names no block (manualBlockId) and has no assignmentPolicyRule"]),
        (lambda d: d["nodes"][1].update(nodeType="vdag"),
         ["node 'b': nodeType 'vdag' needs a vdagURI"]),
        (lambda d: d["nodes"][1].update(nodeType="lambda"),
         ["node 'b': nodeType 'lambda' is not 'block' or 'vdag'"]),
        (lambda d: d["nodes"][2].update(postprocessingPolicyRule={"parameters": {}}),
         ["node 'c': postprocessingPolicyRule needs a policyRuleURI string"]),
        (lambda d: d["graph"].update(output=[]),
         ["graph: no output node (graph.output is empty)"]),
        (lambda d: d["graph"]["output"].append({"nodeLabel": "b"}),
         ["graph: 2 output nodes (b, c); a vDAG answers with one output node "
          "(join them with a fan-in node)"]),
    ],
)  # fmt: skip
def test_each_problem_is_one_line_naming_the_node(mutate, expected):
    raw = chain()
    mutate(raw)
    assert problems(parse(raw)) == expected


def test_a_document_that_is_not_one_is_one_line():
    with pytest.raises(VDagError, match=r"^vDAG document: Object missing required field `graph`$"):
        parse({"vdagName": "x", "nodes": []})
    with pytest.raises(VDagError, match=r"nodes\[0\]"):
        parse({"vdagName": "x", "nodes": [{"label": "a"}], "graph": {}})


# ---------------------------------------------------------------- filter conditions

DOC = {"id": "vision-block-7", "regionId": "us-west-2", "reputation": 92, "memory": 131072,
       "tags": ["ml", "vision"], "gpus": [{"memory": 40000}, {"memory": 81920}],
       "cluster": {"id": "c1"}}  # fmt: skip


@pytest.mark.parametrize(
    "cond, expected",
    [
        ({"variable": "regionId", "operator": "==", "value": "us-west-2"}, True),
        ({"variable": "regionId", "operator": "==", "value": "eu"}, False),
        ({"variable": "reputation", "operator": ">", "value": 90}, True),
        ({"variable": "reputation", "operator": ">", "value": 92}, False),
        ({"variable": "reputation", "operator": ">=", "value": 92}, True),
        ({"variable": "memory", "operator": "<", "value": 131072}, False),
        ({"variable": "memory", "operator": "<=", "value": 131072}, True),
        ({"variable": "tags", "operator": "IN", "value": ["ml"]}, True),  # a list field: any item
        ({"variable": "tags", "operator": "IN", "value": ["nlp"]}, False),
        ({"variable": "regionId", "operator": "IN", "value": ["eu", "us-west-2"]}, True),
        ({"variable": "id", "operator": "LIKE", "value": "*vision*"}, True),
        ({"variable": "id", "operator": "LIKE", "value": "vision"}, False),  # whole value
        ({"variable": "id", "operator": "LIKE", "value": "vision-block-?"}, False),  # * only
        ({"variable": "gpus.memory", "operator": ">", "value": 49152}, True),  # nested, any item
        ({"variable": "gpus.memory", "operator": ">", "value": 90000}, False),
        ({"variable": "cluster.id", "operator": "==", "value": "c1"}, True),
        ({"variable": "missing.field", "operator": "==", "value": None}, False),
        ({"variable": "reputation", "operator": ">", "value": "90"}, False),  # other type
        ({"variable": "regionId", "operator": "!=", "value": "eu"}, True),
        ({"logicalOperator": "AND", "conditions": [
            {"variable": "regionId", "operator": "==", "value": "us-west-2"},
            {"logicalOperator": "OR", "conditions": [
                {"variable": "tags", "operator": "IN", "value": ["nlp"]},
                {"variable": "reputation", "operator": ">=", "value": 95}]}]}, False),
        ({"logicalOperator": "AND", "conditions": [
            {"variable": "regionId", "operator": "==", "value": "us-west-2"},
            {"logicalOperator": "OR", "conditions": [
                {"variable": "tags", "operator": "IN", "value": ["ml"]},
                {"variable": "reputation", "operator": ">=", "value": 95}]}]}, True),
    ],
)  # fmt: skip
def test_filter_conditions_follow_the_seeds_spec(cond, expected):
    assert compile_condition(cond)(DOC) is expected


@pytest.mark.parametrize(
    "cond, message",
    [
        ({"variable": "a", "operator": "~=", "value": 1}, "operator '~=' is not one of"),
        ({"variable": "a", "operator": "IN", "value": 1}, "IN needs a list"),
        ({"operator": "==", "value": 1}, "needs a 'variable'"),
        ({"variable": "a", "operator": "=="}, "has no 'value'"),
        ({"logicalOperator": "XOR", "conditions": []}, "must be AND or OR"),
        ({"logicalOperator": "OR", "conditions": []}, "non-empty conditions"),
    ],
)  # fmt: skip
def test_malformed_conditions_are_refused_once(cond, message):
    with pytest.raises(FilterError, match=message):
        compile_condition(cond)


# ---------------------------------------------------------------- assignment


def assigned(rule):
    raw = chain()
    raw["nodes"][1] = node("b", assignmentPolicyRule=rule)
    return raw


def test_assignment_filters_blocks_and_clusters_and_records_the_choice():
    rule = {"policyRuleURI": "", "parameters": {"filterRule": {"matchType": "block", "filter": {
        "clusterQuery": {"variable": "regionId", "operator": "==", "value": "eu"},
        "blockQuery": {"variable": "tags", "operator": "IN", "value": ["nlp"]}}}}}  # fmt: skip
    doc = parse(assigned(rule))
    plan = compile_vdag(doc, BLOCKS)
    assert plan.nodes["b"].block_id == "b3" and doc.assignment_info["b"] == "b3"


def test_assignment_that_finds_no_block_or_several_is_one_line(tmp_path):
    rule = {"parameters": {"filterRule": {"variable": "score", "operator": ">", "value": 99}}}
    doc = parse(assigned(rule))
    with pytest.raises(VDagError) as err:
        compile_vdag(doc, BLOCKS)
    assert err.value.lines == ["node 'b': assignment found no block (3 candidates, 0 passed "
                               "the filter)"]  # fmt: skip
    assert doc.status == "failed"
    rule = {"parameters": {"filterRule": {"variable": "score", "operator": ">", "value": 85}}}
    with pytest.raises(VDagError, match=r"^node 'b': assignment matched 2 blocks \(b1, b3\); "):
        compile_vdag(parse(assigned(rule)), BLOCKS)


def test_an_assignment_policy_chooses_among_the_filtered_blocks(tmp_path):
    policy = tmp_path / "pick.py"
    policy.write_text(
        "class AIOSv1PolicyRule:\n"
        "    def __init__(self, rule_id, settings, parameters):\n"
        "        self.parameters = parameters\n"
        "    def eval(self, parameters, input_data, context):\n"
        "        best = max(input_data, key=lambda b: b['score'])\n"
        "        return [best]\n"
    )  # fmt: skip
    rule = {
        "policyRuleURI": str(policy),
        "parameters": {
            "filterRule": {"variable": "cluster.regionId", "operator": "==", "value": "eu"}
        },
    }
    assert compile_vdag(parse(assigned(rule)), BLOCKS).nodes["b"].block_id == "b3"
    broken = tmp_path / "broken.py"
    broken.write_text(
        "class AIOSv1PolicyRule:\n"
        "    def __init__(self, rule_id, settings, parameters): pass\n"
        "    def eval(self, parameters, input_data, context): raise KeyError('region')\n"
    )  # fmt: skip
    with pytest.raises(VDagError, match=r"^node 'b': assignment policy '.*broken.py' failed: "
                                        r"'region'$"):  # fmt: skip
        compile_vdag(parse(assigned({"policyRuleURI": str(broken)})), BLOCKS)


def test_a_missing_block_is_named():
    raw = chain()
    raw["nodes"][2]["manualBlockId"] = "gone"
    with pytest.raises(VDagError) as err:
        compile_vdag(parse(raw), BLOCKS)
    assert err.value.lines == ["node 'c': block 'gone' not found"]


def test_a_fan_in_node_whose_block_may_run_several_instances_is_refused():
    # a -> (b, c) -> d: d joins the inputs in one instance's memory
    raw = vdag([node("a", "b1"), node("b", "b2"), node("c", "b3"), node("d", "j")],
               {"b": ["a"], "c": ["a"], "d": ["b", "c"]}, output="d")  # fmt: skip
    one = [*BLOCKS, {"id": "j", "minInstances": 1, "maxInstances": 1}]
    assert compile_vdag(parse(raw), one).nodes["d"].inputs == ["b", "c"]
    several = [*BLOCKS, {"id": "j", "minInstances": 1, "maxInstances": 3}]
    with pytest.raises(VDagError) as err:
        compile_vdag(parse(raw), several)
    assert err.value.lines == [
        "node 'd': a fan-in node joins its inputs in one instance, but block 'j' may run 3 "
        "(maxInstances): give it maxInstances 1 or the builtin:consistent_hash loadBalancer"
    ]
    # placed by session: a task's inputs share its session_id, so they meet
    hashed = dict(several[-1], policies={"loadBalancer": {
        "policyRuleURI": "builtin:consistent_hash"}})  # fmt: skip
    assert compile_vdag(parse(raw), [*BLOCKS, hashed]).nodes["d"].inputs == ["b", "c"]
    # a block that runs several instances is fine where it is not a fan-in node
    raw2 = vdag([node("a", "j"), node("b", "b2"), node("c", "b3")], {"b": ["a"], "c": ["b"]})
    assert compile_vdag(parse(raw2), several).nodes["a"].block_id == "j"


# ---------------------------------------------------------------- sub-vDAGs


def sub(name="inner", inner_nodes=None):
    return vdag(inner_nodes or [node("x", "b2"), node("y", "b3")], {"y": ["x"]},
                inputs=("x",), output="y", name=name)  # fmt: skip


def test_a_sub_vdag_node_is_expanded_in_place():
    raw = vdag([node("a", "b1"), {"nodeLabel": "n", "nodeType": "vdag",
                                  "vdagURI": "inner:1.0-stable"}, node("c", "b1")],
               {"n": ["a"], "c": ["n"]})  # fmt: skip
    doc = parse(raw)
    plan = compile_vdag(doc, BLOCKS, {"inner:1.0-stable": sub()})
    assert plan.nodes["a"].next == ["n/x"]
    assert plan.nodes["n/x"].next == ["n/y"] and plan.nodes["n/y"].next == ["c"]
    assert plan.nodes["c"].inputs == ["n/y"]
    assert doc.assignment_info["n"] == "vdag:::inner:1.0-stable"
    assert doc.assignment_info["n/y"] == "b3"


def test_sub_vdag_problems_cycles_and_depth_are_named():
    n = {"nodeLabel": "n", "nodeType": "vdag", "vdagURI": "inner:1.0-stable"}
    outer = vdag([node("a", "b1"), n, node("c", "b1")], {"n": ["a"], "c": ["n"]})
    with pytest.raises(VDagError, match=r"^node 'n': sub-vDAG 'inner:1.0-stable' not found$"):
        compile_vdag(parse(outer), BLOCKS)
    broken = sub(inner_nodes=[node("x", "b2"), node("y", "nope")])
    with pytest.raises(VDagError, match=r"^node 'n/y': block 'nope' not found$"):
        compile_vdag(parse(outer), BLOCKS, {"inner:1.0-stable": broken})
    # inner contains outer: a cycle across vDAGs
    loop = vdag([node("x", "b2"), {"nodeLabel": "back", "nodeType": "vdag",
                                   "vdagURI": "pipe:1.0-stable"}],
                {"back": ["x"]}, inputs=("x",), output="back", name="inner")  # fmt: skip
    with pytest.raises(VDagError, match=r"^node 'n/back': vDAG cycle pipe:1.0-stable -> "
                                        r"inner:1.0-stable -> pipe:1.0-stable$"):  # fmt: skip
        compile_vdag(parse(outer), BLOCKS, {"inner:1.0-stable": loop, "pipe:1.0-stable": outer})
    # a deep (acyclic) nesting: level i holds level i+1
    levels = {f"l{i}:1.0-stable": vdag(
        [{"nodeLabel": "n", "nodeType": "vdag", "vdagURI": f"l{i + 1}:1.0-stable"}], {},
        inputs=("n",), output="n", name=f"l{i}") for i in range(12)}  # fmt: skip
    levels["l12:1.0-stable"] = sub(name="l12")
    top = parse(levels["l0:1.0-stable"])
    with pytest.raises(VDagError, match=r"vDAGs nested deeper than 3$"):
        compile_vdag(top, BLOCKS, levels, max_depth=3)
    assert len(compile_vdag(parse(levels["l0:1.0-stable"]), BLOCKS, levels,
                            max_depth=20).nodes) == 2  # fmt: skip
