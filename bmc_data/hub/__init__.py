"""Stage 4b, the Hub: a bridged dataset saved as a Hub-ready folder (`save`), its dataset card (`card`),
what card and page say about a dataset (`facts`), pushing it in one commit (`push`) and loading it back
(`load`)."""
