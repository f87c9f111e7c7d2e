package org.imsfhir.hapi;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.provider.JpaSystemProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.ETagSupportEnum;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.interceptor.RequestValidatingInterceptor;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.IInstanceValidatorModule;
import ca.uhn.fhir.validation.ResultSeverityEnum;
import jakarta.persistence.EntityManagerFactory;
import java.util.HashMap;
import java.util.Map;
import javax.sql.DataSource;
import org.springframework.beans.factory.annotation.Qualifier;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Import;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;
import org.springframework.transaction.annotation.EnableTransactionManagement;

/**
 * Spring wiring of the HAPI FHIR JPA server for ims-fhir tests.
 *
 * <p>Terms: <em>storage settings</em> are HAPI's {@link JpaStorageSettings} (how the JPA layer
 * stores, searches and deletes); the <em>RestfulServer</em> is HAPI's FHIR servlet, mounted at
 * {@code /fhir/*}; the <em>request validator</em> checks every incoming resource body against
 * base FHIR R4 before it is stored.
 *
 * <p>Only the HAPI configurations a plain R4 JPA server needs are imported: no MDM, clinical
 * reasoning, subscriptions delivery, full-text search, narratives or web tester UI.
 */
@Configuration
@EnableTransactionManagement
@Import({
	JpaR4Config.class,
	HapiJpaConfig.class,
	JpaBatch2Config.class,
	Batch2JobsConfig.class,
	ThreadPoolFactoryConfig.class,
	// In-JVM message channels; batch2 (used by $expunge, reindex, merge) runs its work over them.
	SubscriptionChannelConfig.class
})
public class FhirServerConfig {

	/** How the JPA layer behaves; every value here is something a test relies on. */
	@Bean
	public JpaStorageSettings storageSettings() {
		JpaStorageSettings settings = new JpaStorageSettings();
		// A search right after a write must see the write: never answer from a cached search.
		settings.setReuseCachedSearchResultsForMillis(null);
		// PUT Type/<id> with ids we choose (UUIDs, slugs); purely numeric ids stay server-only.
		settings.setResourceClientIdStrategy(JpaStorageSettings.ClientIdStrategyEnum.ALPHANUMERIC);
		// Tests wipe the database with $expunge expungeEverything instead of restarting the JVM.
		settings.setExpungeEnabled(true);
		settings.setDeleteExpungeEnabled(true);
		settings.setAllowMultipleDelete(true);
		// No Lucene/Elasticsearch: _text/_content are not supported, everything else is SQL.
		settings.setHibernateSearchIndexFullText(false);
		settings.setAdvancedHSearchIndexing(false);
		return settings;
	}

	@Bean
	public PartitionSettings partitionSettings() {
		return new PartitionSettings();
	}

	@Bean
	public SubscriptionSettings subscriptionSettings() {
		return new SubscriptionSettings();
	}

	/** Hibernate over the Boot-built H2 DataSource; the schema is created at start-up. */
	@Bean
	@Primary
	public LocalContainerEntityManagerFactoryBean entityManagerFactory(
			ConfigurableListableBeanFactory beanFactory,
			FhirContext fhirContext,
			JpaStorageSettings storageSettings,
			DataSource dataSource) {
		LocalContainerEntityManagerFactoryBean factory =
				HapiEntityManagerFactoryUtil.newEntityManagerFactory(beanFactory, fhirContext, storageSettings);
		factory.setPersistenceUnitName("HAPI_PU");
		factory.setDataSource(dataSource);
		Map<String, Object> jpa = new HashMap<>();
		// H2 is not auto-detected with HAPI's custom dialect features (hapi-fhir#3404).
		jpa.put("hibernate.dialect", HapiFhirH2Dialect.class.getName());
		jpa.put("hibernate.hbm2ddl.auto", "update");
		jpa.put("hibernate.search.enabled", "false");
		jpa.put("hibernate.jdbc.batch_size", "20");
		jpa.put("hibernate.cache.use_query_cache", "false");
		jpa.put("hibernate.cache.use_second_level_cache", "false");
		jpa.put("hibernate.cache.use_structured_entries", "false");
		jpa.put("hibernate.cache.use_minimal_puts", "false");
		jpa.put("hibernate.format_sql", "false");
		jpa.put("hibernate.show_sql", "false");
		factory.setJpaPropertyMap(jpa);
		return factory;
	}

	@Bean
	@Primary
	public JpaTransactionManager transactionManager(EntityManagerFactory entityManagerFactory) {
		JpaTransactionManager manager = new JpaTransactionManager();
		manager.setEntityManagerFactory(entityManagerFactory);
		return manager;
	}

	/**
	 * The validator behind every write: base R4 structure, cardinality, datatypes and bindings,
	 * and the profiles a resource names in {@code meta.profile}.
	 *
	 * <p>The module is HAPI's JPA instance validator (base R4 definitions, the IMS IG package
	 * added by {@link ImsIgValidationConfig}, and any profile/CodeSystem/ValueSet stored on this
	 * server; nothing remote, so it works offline). Strict: every coding of a CodeableConcept
	 * must be valid, and a code system the validator does not know is an error, except the
	 * external systems of {@link OfflineTerminologyWarnings} (warnings: not checkable offline).
	 */
	@Bean
	public FhirValidator requestValidator(
			FhirContext fhirContext,
			@Qualifier("myInstanceValidator") IInstanceValidatorModule instanceValidator) {
		FhirValidator validator = fhirContext.newValidator();
		validator.registerValidatorModule(instanceValidator);
		validator.setInterceptorBroadcaster(ImsIgValidationConfig.unknownCodeSystemsAreErrors());
		return validator;
	}

	/** Refuses any incoming resource body (create, update, transaction, operation input) with an ERROR: 422. */
	@Bean
	public RequestValidatingInterceptor requestValidatingInterceptor(FhirValidator requestValidator) {
		RequestValidatingInterceptor interceptor = new RequestValidatingInterceptor();
		interceptor.setValidator(requestValidator);
		interceptor.setFailOnSeverity(ResultSeverityEnum.ERROR);
		// Issues go into the 422 body; no X-FHIR-Request-Validation headers on success.
		interceptor.setAddResponseHeaderOnSeverity(null);
		interceptor.setAddResponseOutcomeHeaderOnSeverity(null);
		return interceptor;
	}

	@Bean
	public ValidatorWarmup validatorWarmup(FhirContext fhirContext, FhirValidator requestValidator) {
		return new ValidatorWarmup(fhirContext, requestValidator);
	}

	@Bean
	public RestfulServer fhirRestfulServer(
			FhirContext fhirContext,
			@Qualifier("myResourceProvidersR4") ResourceProviderFactory resourceProviders,
			@Qualifier("mySystemProviderR4") JpaSystemProvider<?, ?> systemProvider,
			IFhirSystemDao<?, ?> systemDao,
			JpaStorageSettings storageSettings,
			ISearchParamRegistry searchParamRegistry,
			IValidationSupport validationSupport,
			DatabaseBackedPagingProvider pagingProvider,
			RequestValidatingInterceptor requestValidatingInterceptor) {
		RestfulServer server = new RestfulServer(fhirContext);
		server.setServerName("ims-fhir HAPI FHIR test server");
		server.registerProviders(resourceProviders.createProviders());
		// Transactions/batches, history, $expunge on the server base.
		server.registerProvider(systemProvider);
		server.setServerConformanceProvider(new JpaCapabilityStatementProvider(
				server, systemDao, storageSettings, searchParamRegistry, validationSupport));
		server.setPagingProvider(pagingProvider);
		server.setDefaultResponseEncoding(EncodingEnum.JSON);
		// ETag on reads/writes. A stale If-Match gets HAPI's own answer (409, HAPI-0989), as on a stock
		// HAPI server: the client treats 409 and 412 alike as version conflicts.
		server.setETagSupport(ETagSupportEnum.ENABLED);
		server.registerInterceptor(requestValidatingInterceptor);
		return server;
	}

	@Bean
	public ServletRegistrationBean<RestfulServer> fhirServlet(RestfulServer fhirRestfulServer) {
		ServletRegistrationBean<RestfulServer> registration =
				new ServletRegistrationBean<>(fhirRestfulServer, "/fhir/*");
		registration.setName("fhir");
		registration.setLoadOnStartup(1);
		return registration;
	}
}
