from edge_runtime import Model


def test_bundle_predicts_like_sklearn(cancer_bundle, cancer_data, cancer_model):
    x, _, names = cancer_data
    model = Model.load(cancer_bundle)
    rows = [dict(zip(names, map(float, r))) for r in x[:50]]
    out = model.predict(rows)
    want = cancer_model.predict_proba(x[:50])[:, 1]
    assert len(out) == 50
    for o, w in zip(out, want):
        assert abs(o["probability"] - w) < 1e-4
        assert o["risk_level"] in {"high", "medium", "low"}
    assert model.self_test() == 1
