"""Where a request is served: the target model, the decision, the retry loop, peers, copies."""
