# The reference-free route to templates (pick.templates: class2d), RELION's and cryoSPARC's everyday practice:
# pick with blobs of the particle's size, extract, classify in 2D and select, then rule pick uses the selected
# class averages as its templates. The rules are the stages' own (`use rule`), with their outputs under *_blob.


use rule pick as pick_blob with:
    input:
        micrographs=lambda w: BATCHES[w.batch],
        templates=[],
        ctf=pick_ctf,
    output:
        picks=f"{RESULTS}/pick_blob/batch_{{batch}}/picks.star",
        preview=f"{RESULTS}/pick_blob/batch_{{batch}}/picks_preview.png",
    params:
        out=f"{RESULTS}/pick_blob/batch_{{batch}}",
        source=["--blob", "disc"],
    log:
        f"{RESULTS}/logs/pick_blob_{{batch}}.log",


use rule extract as extract_blob with:
    input:
        picks=rules.pick_blob.output.picks,
        ctf=ctf_star,
        micrographs=lambda w: BATCHES[w.batch],
    output:
        particles=f"{RESULTS}/extract_blob/batch_{{batch}}/particles.star",
    params:
        out=f"{RESULTS}/extract_blob/batch_{{batch}}",
    log:
        f"{RESULTS}/logs/extract_blob_{{batch}}.log",


use rule gather_particles as gather_blob with:
    input:
        expand(f"{RESULTS}/extract_blob/batch_{{batch}}/particles.star", batch=sorted(BATCHES)),
    output:
        particles=f"{RESULTS}/extract_blob/particles.star",
    params:
        out=f"{RESULTS}/extract_blob",
    log:
        f"{RESULTS}/logs/gather_blob.log",


use rule class2d as class2d_blob with:
    input:
        particles=rules.gather_blob.output.particles,
    output:
        particles=f"{RESULTS}/class2d_blob/particles.star",
        classes=f"{RESULTS}/class2d_blob/classes.star",
        averages=f"{RESULTS}/class2d_blob/class_averages.mrcs",
        figures=[f"{RESULTS}/class2d_blob/class_averages.png", f"{RESULTS}/class2d_blob/class2d_histograms.png"],
    params:
        out=f"{RESULTS}/class2d_blob",
    log:
        f"{RESULTS}/logs/class2d_blob.log",


use rule select2d as select2d_blob with:
    input:
        particles=rules.class2d_blob.output.particles,
        classes=rules.class2d_blob.output.classes,
    output:
        particles=f"{RESULTS}/select2d_blob/particles.star",
        table=f"{RESULTS}/select2d_blob/selection.tsv",
        figure=f"{RESULTS}/select2d_blob/select2d.png",
        averages=f"{RESULTS}/select2d_blob/class_averages.mrcs",  # the templates of rule pick
    params:
        out=f"{RESULTS}/select2d_blob",
    log:
        f"{RESULTS}/logs/select2d_blob.log",
