"""Stage 4a, selection: which pairs to train on. DCRM pair quality and best-of-N² pairing (`pair_quality`);
implicit reward margins, alignment potential, dual margin and top-k selection (`margins`)."""
