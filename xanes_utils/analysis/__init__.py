"""Interpretability analyses of a trained family-bucket model: the paper's three studies, one module each.

* :mod:`~xanes_utils.analysis.neurons` - neuron responses ("Brodmann areas"): :func:`sample_properties`,
  :func:`neuron_table`, :func:`cluster_neurons`, :func:`embed_neurons`, :func:`cluster_enrichment`;
* :mod:`~xanes_utils.analysis.homology` - homology of data: :func:`homology_matrix`, :func:`linear_cka`,
  :func:`representation_similarity`, :func:`homology_vs_distance`;
* :mod:`~xanes_utils.analysis.attention` - attention: :func:`attention_table`,
  :func:`attention_variance_decomposition`, :func:`uniform_attention_heads`;
* :mod:`~xanes_utils.analysis.common` - what they share: :func:`record_responses` (a model's layer
  activations and attention weights), the graphs' geometry and the first-shell rule.

Every public name is also importable from ``xanes_utils.analysis`` itself.
"""

from __future__ import annotations

from xanes_utils.analysis.attention import attention_table, attention_variance_decomposition, uniform_attention_heads
from xanes_utils.analysis.common import FIRST_SHELL_FACTOR, ranked_counts, record_responses
from xanes_utils.analysis.homology import (
    homology_matrix, homology_vs_distance, linear_cka, representation_similarity,
)
from xanes_utils.analysis.neurons import (
    PROPERTIES, Enrichment, NeuronClusters, cluster_enrichment, cluster_neurons, coordination_bin, embed_neurons,
    neuron_table, sample_properties,
)

__all__ = [
    "FIRST_SHELL_FACTOR", "PROPERTIES", "Enrichment", "NeuronClusters", "attention_table",
    "attention_variance_decomposition", "cluster_enrichment", "cluster_neurons", "coordination_bin",
    "embed_neurons", "homology_matrix", "homology_vs_distance", "linear_cka", "neuron_table", "ranked_counts",
    "record_responses", "representation_similarity", "sample_properties", "uniform_attention_heads",
]
