from stock_pipeline.cli import main

main()
